"""Reading what a model directory is, without loading its weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ModelDirError(ValueError):
    """The directory is not a usable Hugging Face causal LM directory."""


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 1024 * 1024:
            raise ModelDirError(f"{path.name}: the safetensors header claims {length} bytes")
        return json.loads(fh.read(length))


def count_parameters(model_dir: Path) -> tuple[int | None, str]:
    """(parameter count, dominant dtype) from the safetensors headers, or (None, "") when there are none."""
    total, by_dtype = 0, {}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None, ""
    for file in files:
        for name, info in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            total += numel
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + numel
    dtype = max(by_dtype, key=by_dtype.get).lower() if by_dtype else ""
    return total, dtype


def has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").exists() or (model_dir / "chat_template.json").exists():
        return True
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.exists():
        return bool(json.loads(tokenizer_config.read_text()).get("chat_template"))
    return False


def describe_model_dir(model_dir: str | Path) -> dict:
    """Architecture, sizes, dtype and chat-template presence of a local model directory.

    Raises:
        ModelDirError: not a directory, or no readable config.json.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"{model_dir} is not a directory the server can read")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelDirError(f"{model_dir} has no config.json: is it a Hugging Face model directory?")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{model_dir}/config.json cannot be read: {exc}") from exc
    params, dtype = count_parameters(path)
    architectures = config.get("architectures") or [""]
    return {
        "architecture": architectures[0],
        "model_type": config.get("model_type", ""),
        "parameter_count": params,
        "hidden_size": config.get("hidden_size") or config.get("n_embd"),
        "num_layers": config.get("num_hidden_layers") or config.get("n_layer"),
        "dtype": dtype or str(config.get("torch_dtype") or config.get("dtype") or ""),
        "has_chat_template": has_chat_template(path),
        "config": config,
    }
