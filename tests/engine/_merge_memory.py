"""Peak memory of one merge, measured in a fresh interpreter (run by test_merge.py as a subprocess).

    python -m tests.engine._merge_memory ours|peft BASE_DIR ADAPTER_DIR OUT_DIR

Prints a JSON object: RSS before the merge (imports done) and the RSS high-water mark after it, in bytes.
"""

from __future__ import annotations

import json
import sys
import warnings


def _rss() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def main(mode: str, base_dir: str, adapter_dir: str, out_dir: str) -> None:
    warnings.simplefilter("ignore")
    # each side imports only what it needs; imports are part of the baseline, not of the merge
    if mode == "ours":
        from lora_engine.merge import merge_adapter

        before, _ = _rss()
        merge_adapter(base_dir, adapter_dir, out_dir, max_shard_bytes=50 * 1024**2)
    else:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        logging.disable_progress_bar()
        before, _ = _rss()
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        merged.save_pretrained(out_dir)
    _, peak = _rss()
    print(json.dumps({"before": before, "peak": peak}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
