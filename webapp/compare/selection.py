"""Which jobs a compare URL (``?jobs=id1,id2``) names, for the user asking: theirs, or a 404."""

from __future__ import annotations

import uuid

from django.http import Http404

from webapp.jobs.models import Job

from .summary import MAX_COMPARE_JOBS

JOB_PREFIX = "ftjob-"  # the OpenAI-style job id is accepted too


class SelectionError(ValueError):
    """The list itself is unusable (too long). Unknown or foreign ids are a 404 instead."""


def parse_job_ids(raw: str) -> list[uuid.UUID]:
    """``"a,b,a"`` -> [a, b] (order kept, repeats dropped).

    Raises:
        Http404: an id that is not a job id (it answers like an id that does not exist).
        SelectionError: more than MAX_COMPARE_JOBS jobs.
    """
    ids: list[uuid.UUID] = []
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            job_id = uuid.UUID(part.removeprefix(JOB_PREFIX))
        except ValueError:
            raise Http404("No such job") from None
        if job_id not in ids:
            ids.append(job_id)
    if len(ids) > MAX_COMPARE_JOBS:
        raise SelectionError(f"compare at most {MAX_COMPARE_JOBS} jobs at once (got {len(ids)})")
    return ids


def jobs_for(user, raw: str) -> list[Job]:
    """The named jobs in URL order. Any id the user cannot see (another user's, or none) is a 404."""
    ids = parse_job_ids(raw)
    found = {job.id: job for job in Job.objects.visible_to(user).filter(pk__in=ids).select_related(
        "dataset", "validation_dataset", "base_model", "adapter")}
    if len(found) != len(ids):
        raise Http404("No such job")
    return [found[job_id] for job_id in ids]
