"""Padding-free micro-batches: the same loss and gradients as the padded batch, on every tested architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lora_engine import padding_free
from lora_engine.config import LoraConfig
from lora_engine.data.batching import collate
from lora_engine.data.tokenize import TokenizedExample
from lora_engine.inject import inject_lora
from lora_engine.loss import causal_lm_loss_sum, make_loss_batch
from lora_engine.quant import enable_gradient_checkpointing
from lora_engine.tiny import ARCHITECTURES, build_tiny_model


def _examples(lengths: list[int], prompt: int = 3, seed: int = 0) -> list[TokenizedExample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 500, (n,), generator=gen).tolist()
        out.append(TokenizedExample(ids, [-100] * min(prompt, n - 1) + ids[min(prompt, n - 1):]))
    return out


def _lora_model(arch: str, **overrides):
    model = build_tiny_model(arch, hidden_size=32, heads=4, **overrides)
    targets = {"gpt2": ("c_attn",), "gpt_neox": ("query_key_value",)}.get(arch, ("q_proj", "v_proj"))
    inject_lora(model, LoraConfig(rank=4, alpha=8, targets=targets))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters something to say
            torch.nn.init.normal_(param, std=0.02)
    return model


def _loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = causal_lm_loss_sum(model, batch) / batch.n_targets
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_free_batch_gives_the_padded_batch_loss_and_gradients(arch):
    model = _lora_model(arch).eval()  # eval: GPT-2's dropout would differ between the two passes
    batch = collate(_examples([9, 17, 4, 12]), pad_token_id=0)
    padded = make_loss_batch(batch, torch.device("cpu"))
    expected_loss, expected = _loss_and_grads(model, padded)

    assert padding_free.enable(model, max_seq_len=64)
    flat = make_loss_batch(batch, torch.device("cpu"), padding_free=True)
    assert flat.input_ids.shape == (1, 9 + 17 + 4 + 12) and flat.attention_mask is None
    assert flat.sequences == ((0, 9), (9, 26), (26, 30), (30, 42))
    assert (flat.n_targets, flat.n_tokens) == (padded.n_targets, padded.n_tokens)
    loss, grads = _loss_and_grads(model, flat)

    assert loss == pytest.approx(expected_loss, abs=1e-6)
    assert grads.keys() == expected.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


def test_padding_free_with_gradient_checkpointing_recomputes_each_example_apart():
    model = _lora_model("llama")
    model.train()
    batch = collate(_examples([5, 14, 9], seed=1), pad_token_id=0)
    expected_loss, expected = _loss_and_grads(model, make_loss_batch(batch, torch.device("cpu")))
    enable_gradient_checkpointing(model)
    assert padding_free.enable(model, max_seq_len=64)
    loss, grads = _loss_and_grads(model, make_loss_batch(batch, torch.device("cpu"), padding_free=True))
    assert loss == pytest.approx(expected_loss, abs=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-4, msg=name)


def test_the_switched_model_still_masks_padding_and_generates_like_sdpa():
    model = _lora_model("qwen2").eval()
    ids = torch.randint(3, 500, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        generated = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
    padding_free.enable(model, max_seq_len=64)
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(model.generate(ids[:1], max_new_tokens=5, do_sample=False), generated)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1, :6], before[1, :6])


def test_flatten_leaves_unpadded_batches_alone_and_never_targets_across_examples():
    full = collate(_examples([8, 8]), pad_token_id=0)
    assert padding_free.flatten(full) is None  # no padding: the padded batch is already padding-free
    assert padding_free.flatten(collate(_examples([8]), pad_token_id=0)) is None
    flat = padding_free.flatten(collate(_examples([4, 6], prompt=0), pad_token_id=0))
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]
    # every label is a target (prompt=0) except each example's first token, which nothing may predict
    assert [i for i, label in enumerate(flat["labels"][0].tolist()) if label == -100] == [0, 4]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"sliding_window": 16}, "sliding attention window"),
])
def test_models_it_cannot_match_keep_padded_batches(overrides, reason):
    model = build_tiny_model("mistral", hidden_size=32, heads=4)
    for key, value in overrides.items():
        setattr(model.config, key, value)
    assert reason in padding_free.unsupported_reason(model, max_seq_len=64)
    assert not padding_free.enable(model, max_seq_len=64)
    assert model.config._attn_implementation == "sdpa"
    model.config.sliding_window = 4096  # a window longer than every row never bites
    assert padding_free.unsupported_reason(model, max_seq_len=64) is None
    model.set_attn_implementation("eager")
    assert "eager" in padding_free.unsupported_reason(model, max_seq_len=64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_model_whose_layers_drop_the_sequences_keeps_padded_batches(dtype, monkeypatch):
    model = _lora_model("llama").to(dtype)
    assert padding_free.enable(model, max_seq_len=64)  # checked on the model itself: it matches
    model = _lora_model("llama").to(dtype)

    def leaky(module, query, key, value, attention_mask, **kwargs):  # as if a layer did not pass it down
        kwargs.pop(padding_free.SEQUENCES_KWARG, None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, padding_free.ATTENTION_NAME, leaky)
    assert not padding_free.enable(model, max_seq_len=64)
    assert model.config._attn_implementation == "sdpa" and model.training is False


def test_a_multimodal_config_is_read_for_its_text_window():
    model = build_tiny_model("mistral", hidden_size=32, heads=4)
    text = copy.deepcopy(model.config)
    model.config.sliding_window = None  # as in Gemma 3: the top-level config has no window, its text_config has
    model.config.get_text_config = lambda **_: text
    text.sliding_window = 16
    assert "sliding attention window" in padding_free.unsupported_reason(model, max_seq_len=64)
    text.sliding_window, text.attention_chunk_size = None, 32
    assert "chunked attention" in padding_free.unsupported_reason(model, max_seq_len=64)
