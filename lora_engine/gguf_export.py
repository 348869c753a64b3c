"""Export to llama.cpp: a LoRA adapter as a GGUF LoRA file, a (merged) model as a GGUF model file.

Follows llama.cpp's ``convert_lora_to_gguf.py`` and ``convert_hf_to_gguf.py`` for the llama family:

- tensor names come from gguf-py's own name map (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``);
- llama and mistral store q_proj/k_proj rows permuted for ggml's RoPE layout (``LlamaModel.permute``): the
  rows of W (and of LoRA's B, which holds W's rows) are reordered, qwen2 keeps them as they are;
- adapter tensors are ``<name>.weight.lora_a`` = A (r, in) and ``<name>.weight.lora_b`` = B (out, r), written
  from the torch layout, so ggml sees ne = (in, r) and (r, out); llama.cpp scales by ``adapter.lora.alpha / r``.
  rsLoRA (α/√r) is expressed through that alpha; a layer whose scaling differs has it folded into its B.

A GGUF file is written to a temporary name and renamed: a half-written file is never at ``out_path``. Model
tensors are streamed (tensor infos first, then one tensor at a time), so memory stays around one tensor.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from safetensors import safe_open

from .gguf_vocab import GGUFExportError, add_bpe_vocab
from .lora_factors import LoraFactors, read_lora_factors

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
DTYPES = ("f16", "f32")


class UnsupportedArchitecture(GGUFExportError):
    """The model's architecture has no GGUF mapping here; the message names it and the supported ones."""


@dataclass(frozen=True)
class _Arch:
    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool
    """llama.cpp's LlamaModel reorders q/k rows for its RoPE layout; Qwen2Model does not."""


_ARCHES = {
    "llama": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": _Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),  # llama.cpp converts Mistral as "llama"
    "qwen2": _Arch(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class GGUFExportResult:
    """What an export wrote."""

    out_path: str
    architecture: str
    """The GGUF ``general.architecture`` ("llama" or "qwen2")."""
    tensor_count: int
    size_bytes: int
    lora_alpha: float | None = None
    """The ``adapter.lora.alpha`` written (adapter exports only)."""


def read_model_config(model: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A model's config.json as a dict (``model`` is its directory, or the dict itself).

    Raises:
        GGUFExportError: no readable config.json.
    """
    if isinstance(model, Mapping):
        return dict(model)
    path = Path(model) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GGUFExportError(f"{path} cannot be read ({exc}); point to a Hugging Face model directory") from exc


def gguf_architecture(config: Mapping[str, Any]) -> str:
    """The GGUF architecture name for a config.json (``llama`` for llama/mistral, ``qwen2``).

    Raises:
        UnsupportedArchitecture: any other model type, naming it and the supported ones.
    """
    return gguf.MODEL_ARCH_NAMES[_arch(config).gguf_arch]


def _arch(config: Mapping[str, Any]) -> _Arch:
    model_type = str(config.get("model_type") or "unknown")
    if model_type not in _ARCHES:
        named = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise UnsupportedArchitecture(
            f"GGUF export does not support the {model_type!r} architecture ({named}); supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. Use llama.cpp's own converter for other models")
    return _ARCHES[model_type]


def _name_map(config: Mapping[str, Any], arch: _Arch) -> gguf.TensorNameMap:
    return gguf.get_tensor_name_map(arch.gguf_arch, int(config["num_hidden_layers"]))


def _gguf_name(name_map: gguf.TensorNameMap, hf_name: str) -> str:
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise GGUFExportError(f"tensor {hf_name!r} has no llama.cpp name; it cannot be exported to GGUF")
    return mapped


def permute_rows(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` on the first dimension: per head, interleave its two halves."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _heads_for(hf_name: str, config: Mapping[str, Any], arch: _Arch) -> int | None:
    """How many heads the rows of ``hf_name`` are permuted over (None: not permuted)."""
    if not arch.permute_qk:
        return None
    n_head = int(config["num_attention_heads"])
    if ".q_proj." in f"{hf_name}.":
        return n_head
    if ".k_proj." in f"{hf_name}.":
        return int(config.get("num_key_value_heads") or n_head)
    return None


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise GGUFExportError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")


def _write_atomically(out_path: str | Path, write: Callable[[Path], None]) -> int:
    """Run ``write(temp_path)`` then rename to ``out_path``; returns the file size."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


# ------------------------------------------------------------------------------------------------ adapters


def _adapter_alpha(layers: Mapping[str, LoraFactors]) -> float:
    """llama.cpp scales every layer by alpha/r: the alpha that gives the most common (scaling, rank) pair."""
    products = [round(f.scaling * f.rank, 9) for f in layers.values()]
    return max(set(products), key=products.count)


def _adapter_tensors(adapter_dir: str | Path, config: Mapping[str, Any], arch: _Arch,
                     ) -> tuple[float, list[tuple[str, np.ndarray]]]:
    adapter = read_lora_factors(adapter_dir)
    if adapter.use_dora:
        raise GGUFExportError("llama.cpp LoRA adapters cannot hold DoRA magnitudes; merge this adapter into its "
                              "base model and export the merged model instead")
    if adapter.replacements or any(f.lora_B_bias is not None for f in adapter.layers.values()):
        raise GGUFExportError("this adapter also trains whole tensors or biases, which a llama.cpp LoRA file cannot "
                              "hold; merge it and export the merged model instead")
    alpha = _adapter_alpha(adapter.layers)
    name_map = _name_map(config, arch)
    tensors: list[tuple[str, np.ndarray]] = []
    for module, factors in sorted(adapter.layers.items()):
        target = _gguf_name(name_map, f"{module}.weight")
        lora_b = factors.lora_B.float()
        fold = factors.scaling / (alpha / factors.rank)  # 1.0 unless this layer's scaling differs
        if not math.isclose(fold, 1.0, rel_tol=1e-9):
            lora_b = lora_b * fold
        heads = _heads_for(module, config, arch)
        if heads is not None:
            lora_b = permute_rows(lora_b, heads)
        tensors.append((f"{target}.lora_a", factors.lora_A.float().contiguous().numpy()))
        tensors.append((f"{target}.lora_b", lora_b.contiguous().numpy()))
    return alpha, tensors


def export_adapter_gguf(adapter_dir: str | Path, base_model_dir: str | Path | Mapping[str, Any],
                        out_path: str | Path, name: str | None = None) -> GGUFExportResult:
    """Write a PEFT LoRA adapter as a llama.cpp LoRA adapter GGUF (``llama-cli -m base.gguf --lora out.gguf``).

    Args:
        adapter_dir: a PEFT-layout LoRA adapter directory (safetensors).
        base_model_dir: the base model's directory (only its config.json is read), or that config as a dict.
        out_path: the .gguf file to write (replaced atomically).
        name: ``general.name`` (default: the adapter directory's name).

    Returns:
        A :class:`GGUFExportResult`; tensors are float32, as llama.cpp's converter writes them by default.

    Raises:
        UnsupportedArchitecture: the base model is not llama, mistral or qwen2.
        GGUFExportError: DoRA or extra trained tensors, or a module without a llama.cpp name.
        AdapterFormatError: the adapter files are missing or damaged.
    """
    config = read_model_config(base_model_dir)
    arch = _arch(config)
    alpha, tensors = _adapter_tensors(adapter_dir, config, arch)

    def write(temp: Path) -> None:
        writer = gguf.GGUFWriter(temp, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name or Path(adapter_dir).name)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, array in tensors:
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    size = _write_atomically(out_path, write)
    return GGUFExportResult(out_path=str(out_path), architecture=gguf.MODEL_ARCH_NAMES[arch.gguf_arch],
                            tensor_count=len(tensors), size_bytes=size, lora_alpha=alpha)


# -------------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _PlannedTensor:
    gguf_name: str
    hf_name: str
    file: Path
    shape: tuple[int, ...]
    np_dtype: type
    heads: int | None


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = any(model_dir.glob("*.bin"))
        hint = " (only pickled .bin weights: re-save the model with safetensors)" if pickled else ""
        raise GGUFExportError(f"{model_dir} holds no .safetensors weights{hint}")
    return files


def _plan(model_dir: Path, config: Mapping[str, Any], arch: _Arch, dtype: str) -> list[_PlannedTensor]:
    name_map = _name_map(config, arch)
    planned: list[_PlannedTensor] = []
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith(_SKIPPED_SUFFIXES):
                    continue
                shape = tuple(handle.get_slice(hf_name).get_shape())
                # as llama.cpp: 1-D tensors (norms, biases) stay f32, matrices take the chosen type
                np_dtype = np.float16 if dtype == "f16" and len(shape) > 1 else np.float32
                planned.append(_PlannedTensor(_gguf_name(name_map, hf_name), hf_name, file, shape, np_dtype,
                                              _heads_for(hf_name, config, arch)))
    if not any(t.gguf_name == "token_embd.weight" for t in planned):
        raise GGUFExportError(f"{model_dir} has no token embedding (model.embed_tokens.weight); is it complete?")
    return planned


def _tensor_data(tensors: list[_PlannedTensor]) -> Iterator[np.ndarray]:
    """The planned tensors' data in plan order, one at a time (converted, q/k rows permuted)."""
    open_file: Path | None = None
    handle: Any = None
    for planned in tensors:
        if planned.file != open_file:  # the plan lists each file's tensors together
            handle = safe_open(str(planned.file), framework="pt")
            open_file = planned.file
        data = handle.get_tensor(planned.hf_name).float()
        if planned.heads is not None:
            data = permute_rows(data, planned.heads)
        yield data.numpy().astype(planned.np_dtype, copy=False)


def _rope_theta(config: Mapping[str, Any]) -> float | None:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = config.get("rope_theta", params.get("rope_theta") if isinstance(params, Mapping) else None)
    return None if theta is None else float(theta)


def _add_hparams(writer: gguf.GGUFWriter, config: Mapping[str, Any], arch: _Arch, dtype: str) -> None:
    """The hyper-parameters llama.cpp's TextModel/LlamaModel/Qwen2Model.set_gguf_parameters write."""
    n_head = int(config["num_attention_heads"])
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    if (theta := _rope_theta(config)) is not None:
        writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    head_dim = config.get("head_dim")
    if head_dim is not None:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    if arch.gguf_arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_rope_dimension_count(int(head_dim or int(config["hidden_size"]) // n_head))
    ftype = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(ftype)


def export_model_gguf(model_dir: str | Path, out_path: str | Path, dtype: str = "f16",
                      name: str | None = None,
                      on_tensor: Callable[[int, int], None] | None = None) -> GGUFExportResult:
    """Write a Hugging Face llama/mistral/qwen2 model directory (e.g. a merged model) as a GGUF model.

    Args:
        model_dir: holds config.json, *.safetensors and a byte-level BPE tokenizer (tokenizer.json).
        out_path: the .gguf file to write (replaced atomically).
        dtype: "f16" (matrices in float16, norms and biases float32, as llama.cpp's converter) or "f32".
        name: ``general.name`` (default: the model directory's name).
        on_tensor: called as ``on_tensor(written, total)`` after each tensor's data is written (progress; an
            exception it raises stops the export and nothing is left at ``out_path``).

    Returns:
        A :class:`GGUFExportResult`.

    Raises:
        UnsupportedArchitecture: the model is not llama, mistral or qwen2.
        GGUFExportError: no safetensors weights, an unmappable tensor, or a tokenizer that is not byte-level BPE.
    """
    _check_dtype(dtype)
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    arch = _arch(config)
    planned = _plan(model_dir, config, arch, dtype)

    def write(temp: Path) -> None:
        writer = gguf.GGUFWriter(temp, gguf.MODEL_ARCH_NAMES[arch.gguf_arch])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.name)
        _add_hparams(writer, config, arch, dtype)
        add_bpe_vocab(writer, model_dir, int(config["vocab_size"]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor in planned:
            nbytes = math.prod(tensor.shape) * np.dtype(tensor.np_dtype).itemsize
            writer.add_tensor_info(tensor.gguf_name, tensor.shape, np.dtype(tensor.np_dtype), nbytes)
        writer.write_header_to_file(temp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for written, data in enumerate(_tensor_data(planned), start=1):
            writer.write_tensor_data(data)
            if on_tensor is not None:
                on_tensor(written, len(planned))
        writer.close()

    size = _write_atomically(out_path, write)
    return GGUFExportResult(out_path=str(out_path), architecture=gguf.MODEL_ARCH_NAMES[arch.gguf_arch],
                            tensor_count=len(planned), size_bytes=size)


__all__ = [
    "DTYPES", "GGUFExportError", "GGUFExportResult", "SUPPORTED_MODEL_TYPES", "UnsupportedArchitecture",
    "export_adapter_gguf", "export_model_gguf", "gguf_architecture", "permute_rows", "read_model_config",
]
