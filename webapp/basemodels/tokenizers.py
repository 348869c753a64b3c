"""The base models' tokenizers, loaded once per process and kept (previews and stats call this on page loads)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .hub import HubModelNotCachedError, cached_snapshot_dir
from .models import BaseModel

MAX_CACHED = 8
_cache: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


class TokenizerLoadError(ValueError):
    """The model's tokenizer cannot be loaded on this server; the message says why."""


def model_directory(model: BaseModel) -> str:
    """The local directory to read ``model`` from (hub models: the local cache snapshot, never the network).

    Raises:
        TokenizerLoadError: the hub model is no longer in the local cache.
    """
    if model.source == BaseModel.Source.LOCAL:
        return model.local_path
    try:
        return str(cached_snapshot_dir(model.hub_id, model.revision))
    except HubModelNotCachedError as exc:
        raise TokenizerLoadError(str(exc)) from exc


def _load(directory: str, trust_remote_code: bool):
    from lora_engine.errors import ModelLoadError
    from lora_engine.quant import load_tokenizer

    try:
        return load_tokenizer(directory, trust_remote_code=trust_remote_code)
    except ModelLoadError as exc:
        raise TokenizerLoadError(str(exc)) from exc


def get_tokenizer(model: BaseModel):
    """The tokenizer of ``model`` (with its chat template), cached per model, location and trust setting.

    Raises:
        TokenizerLoadError: missing directory or tokenizer files.
    """
    key = (str(model.pk), model.location, model.revision, model.trust_remote_code)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    tokenizer = _load(model_directory(model), model.trust_remote_code)
    with _lock:
        _cache[key] = tokenizer
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return tokenizer


def clear_tokenizer_cache() -> None:
    with _lock:
        _cache.clear()
