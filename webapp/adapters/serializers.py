"""The JSON shape of an adapter (used by the native API and the pages' scripts)."""

from __future__ import annotations

from .models import Adapter


def _checkpoint(adapter: Adapter) -> dict | None:
    """``{job_id, step}`` of an adapter made from a job's checkpoint (webapp.adapters.checkpoints), else None."""
    made_from = (adapter.config or {}).get("checkpoint")
    return {"job_id": made_from["job_id"], "step": made_from["step"]} if isinstance(made_from, dict) else None


def adapter_json(adapter: Adapter) -> dict:
    return {
        "id": str(adapter.id),
        "object": "adapter",
        "name": adapter.name,
        "source": adapter.source,
        "job_id": str(adapter.job_id) if adapter.job_id else None,
        "checkpoint": _checkpoint(adapter),
        "base_model": adapter.base_model.name,
        "base_revision": adapter.base_revision,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "targets": adapter.targets,
        "use_rslora": adapter.use_rslora,
        "use_dora": adapter.use_dora,
        "trainable_params": adapter.trainable_params,
        "size_bytes": adapter.size_bytes,
        "sha256": adapter.sha256,
        "final_train_loss": adapter.final_train_loss,
        "final_eval_loss": adapter.final_eval_loss,
        "dataset_sha256": adapter.dataset_sha256,
        "created_at": int(adapter.created_at.timestamp()),
        "download_url": f"/api/adapters/{adapter.id}/download",
    }
