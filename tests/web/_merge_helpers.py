"""Helpers for the merge tests: a tiny base model, a PEFT adapter with a non-zero ΔW registered through
upload_adapter, and checks on a downloaded merge archive (extract, load with plain transformers, compare
logits with peft's base + adapter)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import warnings
from pathlib import Path

import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from lora_engine.tiny import save_tiny_model

TINY = {"arch": "llama", "hidden_size": 32, "layers": 2, "heads": 4}
SAMPLE_IDS = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 11], [5, 6, 7, 8, 9, 10, 11, 12]])


def save_tiny_base(root: Path) -> Path:
    return save_tiny_model(root / "tiny-llama", **TINY)


def load_model(path: Path | str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def peft_adapter_dir(base_dir: Path, out_dir: Path, rank: int = 4) -> Path:
    """A PEFT adapter with random A and B (B ≠ 0, so the merge changes the weights)."""
    import peft

    torch.manual_seed(0)
    config = peft.LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(load_model(base_dir), config).save_pretrained(str(out_dir))
    return out_dir


def register_adapter(owner, base_dir: Path, work_dir: Path, name: str = "tiny adapter"):
    """A base model and a PEFT adapter, registered through the real actions. Returns the Adapter."""
    from webapp.adapters.actions import upload_adapter
    from webapp.basemodels.actions import register_local_model

    base_model = register_local_model(owner, f"tiny-{work_dir.name}"[:60], str(base_dir))
    adapter_dir = peft_adapter_dir(base_dir, work_dir / "peft-adapter")
    files = {n: SimpleUploadedFile(n, (adapter_dir / n).read_bytes())
             for n in ("adapter_config.json", "adapter_model.safetensors")}
    return upload_adapter(owner, base_model, name, files)


def peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base_dir), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=SAMPLE_IDS).logits


def extract_archive(data: bytes, into: Path) -> Path:
    """Extract a downloaded merge .tar; returns its single top-level folder."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
        tar.extractall(into, filter="data")
    tops = {name.split("/", 1)[0] for name in names}
    assert len(tops) == 1, tops
    return into / tops.pop()


def assert_manifest_matches(folder: Path) -> None:
    """Every line of MANIFEST.sha256 (sha256sum format) matches the extracted file."""
    lines = (folder / "MANIFEST.sha256").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert set(listed) == {p.name for p in folder.iterdir()} - {"MANIFEST.sha256"}


def assert_merged_model_matches_peft(folder: Path, base_dir: Path, adapter_dir: Path) -> None:
    """The extracted folder loads with plain transformers, and its logits equal peft's base + adapter."""
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    with torch.no_grad():
        merged = load_model(folder)(input_ids=SAMPLE_IDS).logits
    expected = peft_logits(base_dir, adapter_dir)
    assert (merged - expected).abs().max().item() < 1e-4
