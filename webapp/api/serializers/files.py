"""The OpenAI ``file`` object for a Dataset."""

from __future__ import annotations

from webapp.datasets.models import Dataset

from ..ids import file_id


def unix(moment) -> int | None:
    return int(moment.timestamp()) if moment else None


def file_json(dataset: Dataset) -> dict:
    return {
        "id": file_id(dataset.id),
        "object": "file",
        "bytes": dataset.size_bytes,
        "created_at": unix(dataset.created_at),
        "filename": dataset.name,
        "purpose": dataset.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        # LoRA Studio additions (ignored by OpenAI clients):
        "format": dataset.format,
        "rows": dataset.rows,
        "sha256": dataset.sha256,
    }


def file_deleted_json(dataset_id) -> dict:
    return {"id": file_id(dataset_id), "object": "file", "deleted": True}
