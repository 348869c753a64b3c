"""Finding hub models in the local Hugging Face cache. Never touches the network: the studio may be offline."""

from __future__ import annotations

from pathlib import Path


class HubModelNotCachedError(LookupError):
    """A hub id that is malformed, or not in this machine's Hugging Face cache."""


def cached_snapshot_dir(hub_id: str, revision: str = "") -> Path:
    """The local snapshot directory of ``hub_id`` at ``revision`` (default branch when empty).

    Raises:
        HubModelNotCachedError: malformed id, or the model is not in the local cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(hub_id)
    except HFValidationError as exc:
        raise HubModelNotCachedError(
            f"{hub_id!r} is not a valid hub id: use the form 'organisation/model-name'.") from exc
    try:
        folder = snapshot_download(hub_id, revision=revision or None, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        at = f" at revision {revision!r}" if revision else ""
        raise HubModelNotCachedError(
            f"Cannot reach the model hub from this server, and {hub_id!r}{at} was not found in the local Hugging Face "
            "cache. Download it on this machine first (huggingface-cli download " + hub_id + "), or register the "
            "model's directory as a local path."
        ) from exc
    return Path(folder)
