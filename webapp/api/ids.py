"""Public identifiers in OpenAI's style and their parsing.

| object          | id                                              | row                         |
| --------------- | ----------------------------------------------- | --------------------------- |
| file            | ``file-<uuid hex>``                             | Dataset                     |
| fine-tuning job | ``ftjob-<uuid hex>``                            | Job                         |
| job event       | ``ftevent-e<pk hex>`` / ``ftevent-m<pk hex>``   | JobEvent / MetricPoint      |
| checkpoint      | ``ftckpt-<pk hex>``                             | Checkpoint                  |
| fine-tuned model| ``ft:<base>:<name>:<adapter uuid hex>``         | Adapter                     |

The native API's bare UUIDs are accepted wherever a prefixed id is.
"""

from __future__ import annotations

import re
import uuid

FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"
MESSAGE_EVENT, METRICS_EVENT = "e", "m"


def _hex(value: uuid.UUID | str) -> str:
    return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex


def file_id(dataset_id: uuid.UUID | str) -> str:
    return FILE_PREFIX + _hex(dataset_id)


def job_id(job_pk: uuid.UUID | str) -> str:
    return JOB_PREFIX + _hex(job_pk)


def event_id(kind: str, pk: int) -> str:
    return f"{EVENT_PREFIX}{kind}{pk:x}"


def checkpoint_id(pk: int) -> str:
    return f"{CHECKPOINT_PREFIX}{pk:x}"


def parse_uuid(identifier: str, prefix: str) -> uuid.UUID | None:
    """``file-<hex>`` (or a bare UUID) -> UUID; None when it is not one."""
    if not isinstance(identifier, str) or len(identifier) > 100:
        return None
    raw = identifier[len(prefix):] if identifier.startswith(prefix) else identifier
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def parse_event_id(identifier: str) -> tuple[str, int] | None:
    """``ftevent-m1f`` -> ("m", 31); None when malformed."""
    if not isinstance(identifier, str) or not identifier.startswith(EVENT_PREFIX):
        return None
    body = identifier[len(EVENT_PREFIX):]
    if len(body) < 2 or body[0] not in (MESSAGE_EVENT, METRICS_EVENT) or len(body) > 20:
        return None
    try:
        return body[0], int(body[1:], 16)
    except ValueError:
        return None


def parse_checkpoint_id(identifier: str) -> int | None:
    if not isinstance(identifier, str) or not identifier.startswith(CHECKPOINT_PREFIX) or len(identifier) > 30:
        return None
    try:
        return int(identifier[len(CHECKPOINT_PREFIX):], 16)
    except ValueError:
        return None


def name_part(text: str) -> str:
    """A model-id-safe piece of a name: letters, digits, '.', '_', '-' (':' separates the parts)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text or "").strip("-")[:64]


def fine_tuned_model_id(base_name: str, adapter_name: str, adapter_id: uuid.UUID | str) -> str:
    return f"ft:{base_name}:{name_part(adapter_name)}:{_hex(adapter_id)}"


def checkpoint_model_id(base_name: str, suffix: str, job_pk: uuid.UUID | str, step: int) -> str:
    return f"ft:{base_name}:{name_part(suffix)}:{_hex(job_pk)}:ckpt-step-{step}"


def parse_fine_tuned_model_id(model: str) -> uuid.UUID | None:
    """The adapter UUID named by ``ft:...:<hex>``; None when ``model`` is not a fine-tuned model id."""
    if not isinstance(model, str) or not model.startswith("ft:") or model.count(":") < 3:
        return None
    try:
        return uuid.UUID(model.rsplit(":", 1)[1])
    except ValueError:
        return None
