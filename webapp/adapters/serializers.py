"""The JSON shape of an adapter (used by the native API and the pages' scripts)."""

from __future__ import annotations

from .models import Adapter


def adapter_json(adapter: Adapter) -> dict:
    return {
        "id": str(adapter.id),
        "object": "adapter",
        "name": adapter.name,
        "source": adapter.source,
        "job_id": str(adapter.job_id) if adapter.job_id else None,
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
