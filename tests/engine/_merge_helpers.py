"""Helpers for the merge and analysis tests: tiny base models and PEFT-made adapters with non-zero ΔW.

peft is only a test-time reference here: it writes adapters the way the rest of the world does, and its
``merge_and_unload`` is the independent answer a merge must match.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from lora_engine.tiny import save_tiny_model

TARGETS = {"llama": ["q_proj", "v_proj", "o_proj", "down_proj"], "gpt2": ["c_attn", "c_proj", "c_fc"]}


def make_base(root: Path, arch: str, **sizes) -> Path:
    """A tiny random base model directory (config, safetensors, tokenizer, generation config)."""
    return save_tiny_model(root / f"base-{arch}", arch=arch, **sizes)


def load_model(path: Path | str) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def peft_model(base_dir: Path, targets: list[str], rank: int = 4, alpha: float = 8.0, dora: bool = False,
               rslora: bool = False, seed: int = 0, base: torch.nn.Module | None = None):
    """A PEFT model whose A and B are both random (B is not zero), so ΔW ≠ 0."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                        use_dora=dora, use_rslora=rslora)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fan_in_fan_out is set to False but the target module is Conv1D"
        return get_peft_model(base if base is not None else load_model(base_dir), config).eval()


def make_adapter(base_dir: Path, out_dir: Path, targets: list[str], **kwargs) -> Path:
    """Save a random PEFT adapter for ``base_dir`` into ``out_dir``."""
    peft_model(base_dir, targets, **kwargs).save_pretrained(str(out_dir))
    return out_dir


def peft_logits(base_dir: Path, adapter_dir: Path, ids: torch.Tensor, merge: bool = False) -> torch.Tensor:
    """Logits of base + adapter computed by peft (unmerged forward, or after ``merge_and_unload``)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base_dir), str(adapter_dir)).eval()
    if merge:
        model = model.merge_and_unload()
    with torch.no_grad():
        return model(input_ids=ids).logits


def logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(model_dir)(input_ids=ids).logits


def sample_ids(vocab: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


def edit_adapter(adapter_dir: Path, edit) -> None:
    """Rewrite ``adapter_model.safetensors`` with ``edit(tensors) -> tensors``."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = edit(load_file(str(path)))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
