"""The playground: several adapters hot-swapped on one loaded base answer exactly like each adapter alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_engine.adapter_io import load_adapter, save_adapter
from lora_engine.config import LoraConfig
from lora_engine.data import Example, Turn, render_example
from lora_engine.errors import AdapterFormatError, ConfigError, LoraEngineError
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.playground import (
    IncrementalDecoder,
    MultiAdapterModel,
    render_messages,
    render_prompt,
    stop_token_ids,
)
from lora_engine.quant import load_tokenizer
from lora_engine.tiny import build_tiny_model, save_tiny_model

TINY = {"hidden_size": 32, "layers": 2, "heads": 4}
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("base") / "tiny", arch="llama", **TINY)


def fresh_base(base_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def adapter_dirs(base_dir, tmp_path_factory) -> dict[str, Path]:
    """Adapter "ours" (lora_engine, q/v, rank 4) and "peft" (PEFT, o_proj/up_proj, rank 2): different targets."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    model = fresh_base(base_dir)
    lora = LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj"))
    inject_lora(model, lora)
    torch.manual_seed(1)
    for layer in lora_layers(model).values():  # a trained-looking update, big enough to change greedy answers
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    ours = save_adapter(model, lora, root / "ours", str(base_dir))

    torch.manual_seed(2)
    peft_config = PeftLoraConfig(r=2, lora_alpha=8, target_modules=["o_proj", "up_proj"], init_lora_weights=False)
    peft_model = get_peft_model(fresh_base(base_dir), peft_config)
    peft_model.save_pretrained(root / "peft")
    return {"ours": ours, "peft": root / "peft"}


def reference_answer(model, prompt_ids: list[int], stops: set[int]) -> list[int]:
    """transformers' own greedy generate (its cache handling, not ours), cut at the first stop token."""
    output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
    answer = output[0, len(prompt_ids):].tolist()
    for i, token in enumerate(answer):
        if token in stops:
            return answer[:i]
    return answer


def test_each_answer_equals_that_adapter_alone_on_one_base(base_dir, adapter_dirs):
    from peft import PeftModel

    tokenizer = load_tokenizer(str(base_dir))
    playground = MultiAdapterModel(fresh_base(base_dir), adapter_dirs)
    prompt_ids = render_prompt(tokenizer, "What is low-rank adaptation?")
    stops = stop_token_ids(tokenizer, playground.model)
    answers = {}
    for adapter_id in (None, "ours", "peft", None):  # back to the base at the end: swapping leaves nothing behind
        playground.activate(adapter_id)
        answers[adapter_id] = list(playground.generate(prompt_ids, NEW_TOKENS, temperature=0.0, stop_ids=stops))

    with_ours = fresh_base(base_dir)
    load_adapter(with_ours, adapter_dirs["ours"])
    with_peft = PeftModel.from_pretrained(fresh_base(base_dir), str(adapter_dirs["peft"])).eval()
    assert answers[None] == reference_answer(fresh_base(base_dir), prompt_ids, stops)
    assert answers["ours"] == reference_answer(with_ours, prompt_ids, stops)
    assert answers["peft"] == reference_answer(with_peft, prompt_ids, stops)
    assert len({tuple(a) for a in answers.values()}) == 3, "the adapters must change the answers for this test"


def test_the_base_weights_exist_once(base_dir, adapter_dirs):
    plain = fresh_base(base_dir)
    playground = MultiAdapterModel(fresh_base(base_dir), adapter_dirs)
    base_params = {n: p for n, p in playground.model.named_parameters() if "lora_" not in n}
    assert sum(p.numel() for p in base_params.values()) == sum(p.numel() for p in plain.parameters())
    adapter_params = [p for n, p in playground.model.named_parameters() if "lora_" in n]
    # r·(in + out) per layer and 2 layers: ours q 32->32, v 32->16 (2 kv heads) at r=4; peft o 32->32, up 32->64 at r=2
    assert sum(p.numel() for p in adapter_params) == 2 * (4 * (64 + 48) + 2 * (64 + 96))
    # every adapter's layer computes with the very same base weight tensor
    for slot in playground.slots.values():
        pointers = {layer.base_layer.weight.data_ptr() for layer in slot.adapters.values()}
        assert pointers == {slot.base_layer.weight.data_ptr()}
    assert set(playground.slots) == {f"model.layers.{i}.{m}" for i in range(2)
                                     for m in ("self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj",
                                               "mlp.up_proj")}


def test_sampling_is_reproducible_with_a_seed(base_dir, adapter_dirs):
    tokenizer = load_tokenizer(str(base_dir))
    playground = MultiAdapterModel(fresh_base(base_dir), {"ours": adapter_dirs["ours"]})
    playground.activate("ours")
    prompt_ids = render_prompt(tokenizer, "hello")

    def sample(seed: int, top_p: float = 1.0) -> list[int]:
        return list(playground.generate(prompt_ids, 12, temperature=1.5, top_p=top_p, seed=seed))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    greedy = list(playground.generate(prompt_ids, 12, temperature=0.0))
    assert sample(3, top_p=1e-6) == greedy  # a tiny nucleus holds only the most likely token


def test_it_refuses_adapters_of_another_base_and_bad_settings(base_dir, adapter_dirs, tmp_path):
    wider = build_tiny_model("llama", hidden_size=64, layers=2, heads=4)
    with pytest.raises(AdapterFormatError, match="another base model"):
        MultiAdapterModel(wider, {"ours": adapter_dirs["ours"]})
    playground = MultiAdapterModel(fresh_base(base_dir), {"ours": adapter_dirs["ours"]})
    with pytest.raises(LoraEngineError, match="unknown adapter"):
        playground.activate("missing")
    with pytest.raises(ConfigError, match="top_p"):
        list(playground.generate([1, 2], 4, temperature=1.0, top_p=0.0))


def test_prompt_rendering_uses_the_chat_template_or_the_plain_layout(tmp_path):
    with_template = load_tokenizer(str(save_tiny_model(tmp_path / "chat", **TINY)))
    ids = render_prompt(with_template, "Hi there")
    assert with_template.decode(ids) == "<|bos|><|user|>Hi there<|assistant|>"
    plain = load_tokenizer(str(save_tiny_model(tmp_path / "plain", chat_template=False, **TINY)))
    assert plain.decode(render_prompt(plain, "Hi there")) == "<|bos|>User: Hi there\n\nAssistant: "


TWO_TURNS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, human"},
             {"role": "user", "content": "Say more"}]


def test_a_follow_up_renders_both_user_turns_and_the_first_answer(tmp_path):
    with_template = load_tokenizer(str(save_tiny_model(tmp_path / "chat", **TINY)))
    assert with_template.decode(render_messages(with_template, TWO_TURNS)) == (
        "<|bos|><|user|>Hi there<|assistant|>Hello, human<|eos|><|user|>Say more<|assistant|>")
    plain = load_tokenizer(str(save_tiny_model(tmp_path / "plain", chat_template=False, **TINY)))
    ids = render_messages(plain, TWO_TURNS)
    assert plain.decode(ids) == ("<|bos|>User: Hi there\n\nAssistant: Hello, human<|eos|>"
                                 "\n\nUser: Say more\n\nAssistant: ")
    # token for token what training on this conversation feeds the model before its second answer
    trained = render_example(Example(tuple(Turn(m["role"], m["content"], True) for m in TWO_TURNS)
                                     + (Turn("assistant", "Fine.", True),), chat=True), plain)
    assert trained.ids[:len(ids)] == ids and not any(trained.trained[len(ids) - 3:len(ids)])
    with pytest.raises(LoraEngineError, match="end with the user"):
        render_messages(plain, TWO_TURNS[:2])


def test_streamed_text_adds_up_to_the_decoded_answer(base_dir):
    tokenizer = load_tokenizer(str(base_dir))
    ids = tokenizer.encode("Low-rank adaptation: héllo wörld ✓", add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == decoder.text
