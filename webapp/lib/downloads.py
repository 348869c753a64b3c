"""Streamed, resumable file downloads (HTTP Range) for files inside DATA_DIR only."""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, StreamingHttpResponse

from webapp.lib.storage import data_path, relative_to_data

CHUNK = 1024 * 1024


class RangeResponse(StreamingHttpResponse):
    """A part of a file (206): a stream that needs no database, sent like a FileResponse (webapp.lib.asgi_handler)."""
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _iter_range(path: Path, start: int, length: int):
    with open(path, "rb") as fh:
        fh.seek(start)
        remaining = length
        while remaining > 0:
            chunk = fh.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single-range header; None when unsatisfiable or malformed."""
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        return (max(0, size - length), size - 1) if length > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end and start < size else None


def ranged_file_response(request: HttpRequest, path: Path, filename: str, etag: str | None = None,
                         content_type: str = "application/octet-stream") -> HttpResponse:
    """A streamed download of ``path`` honouring ``Range`` (single ranges) and ``If-Range``.

    Raises:
        Http404: the path is outside DATA_DIR or missing.
    """
    try:
        path = data_path(relative_to_data(path))
    except ValueError:
        raise Http404("Not found") from None
    if not path.is_file():
        raise Http404("Not found")
    size = os.path.getsize(path)
    quoted_etag = f'"{etag}"' if etag else None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header and (not if_range or if_range == quoted_etag):
        byte_range = _parse_range(range_header, size)
        if byte_range is None:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            return response
        start, end = byte_range
        response = RangeResponse(_iter_range(path, start, end - start + 1), status=206,
                               content_type=content_type)
        response["Content-Length"] = str(end - start + 1)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    else:
        response = FileResponse(open(path, "rb"), content_type=content_type)
        response["Content-Length"] = str(size)
    response["Accept-Ranges"] = "bytes"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    if quoted_etag:
        response["ETag"] = quoted_etag
    return response
