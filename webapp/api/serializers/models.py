"""The OpenAI ``model`` object for base models and fine-tuned adapters."""

from __future__ import annotations

from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel

from ..ids import fine_tuned_model_id
from .files import unix

SYSTEM_OWNER = "system"


def adapter_model_id(adapter: Adapter) -> str:
    """The id scripts use for an adapter: ``ft:<base>:<name>:<adapter hex>`` (the adapter's base must be loaded)."""
    return fine_tuned_model_id(adapter.base_model.name, adapter.name, adapter.id)


def base_model_json(base_model: BaseModel) -> dict:
    return {
        "id": base_model.name,
        "object": "model",
        "created": unix(base_model.created_at),
        "owned_by": SYSTEM_OWNER if base_model.public else base_model.owner.get_username(),
        # LoRA Studio additions:
        "kind": "base",
        "architecture": base_model.architecture,
        "parameter_count": base_model.parameter_count,
    }


def adapter_model_json(adapter: Adapter) -> dict:
    return {
        "id": adapter_model_id(adapter),
        "object": "model",
        "created": unix(adapter.created_at),
        "owned_by": adapter.owner.get_username(),
        # LoRA Studio additions:
        "kind": "adapter",
        "root": adapter.base_model.name,
        "parent": adapter.base_model.name,
        "adapter_id": str(adapter.id),
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "download_url": f"/api/adapters/{adapter.id}/download",
    }


def model_deleted_json(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "deleted": True}
