"""Masking token by token: which tokens the loss sees, for every format and every rendering path."""

from __future__ import annotations

import json

import pytest

from lora_engine.data import Example, RecordError, Turn, normalise, tokenize_example
from lora_engine.data.render import render_example
from lora_engine.tiny import CHAT_TEMPLATE, build_tiny_tokenizer

from ._data_helpers import SlowView, encode, peer

IGN = -100


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return build_tiny_tokenizer(chat_template=False)


@pytest.fixture(scope="module")
def marker_free_tok():
    """The same template without {% generation %} markers: the prefix-rendering path."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    return tokenizer


def _ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def _expected_chat(tok, turns):
    """Ids and labels the tiny ChatML-like template must give (tokens between specials encode alone)."""
    bos, eos, user, assistant, system = _ids(tok, "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>")
    ids, labels = [bos], [IGN]
    for role, content, trained in turns:
        if role == "assistant":
            body = encode(tok, content) + [eos]
            ids += [assistant] + body
            labels += [IGN] + (body if trained else [IGN] * len(body))
        else:
            body = [system if role == "system" else user] + encode(tok, content)
            ids += body
            labels += [IGN] * len(body)
    return ids, labels


def test_alpaca_with_input_masks_everything_but_the_answer(tok):
    with open(peer("alpaca_en_demo.json"), encoding="utf-8") as fh:
        record = next(r for r in json.load(fh) if r["input"])
    out = tokenize_example(normalise(record, "alpaca"), tok, None)
    ids, labels = _expected_chat(tok, [("user", record["instruction"] + "\n\n" + record["input"], False),
                                       ("assistant", record["output"], True)])
    assert out.input_ids == ids and out.labels == labels and not out.truncated
    assert tok.decode([x for x in out.labels if x != IGN]) == record["output"] + "<|eos|>"


def test_openai_weight_zero_turn_is_not_trained(tok):
    turns = [("system", "Be kind.", False), ("user", "q one", False), ("assistant", "wrong answer", False),
             ("user", "q two", False), ("assistant", "right answer", True)]
    record = {"messages": [{"role": r, "content": c, "weight": int(t)} for r, c, t in turns]}
    out = tokenize_example(normalise(record, "openai_chat"), tok, None)
    assert (out.input_ids, out.labels) == _expected_chat(tok, turns)
    assert tok.decode([x for x in out.labels if x != IGN]) == "right answer<|eos|>"


def test_sharegpt_tool_calls_trained_and_observations_not(tok):
    with open(peer("glaive_toolcall_en_demo.json"), encoding="utf-8") as fh:
        record = json.load(fh)[0]
    example = normalise(record, "sharegpt")
    out = tokenize_example(example, tok, None)
    assert (out.input_ids, out.labels) == _expected_chat(tok, [tuple(t) for t in example.turns])
    trained_text = tok.decode([x for x in out.labels if x != IGN])
    calls = [m["value"] for m in record["conversations"] if m["from"] == "function_call"]
    observations = [m["value"] for m in record["conversations"] if m["from"] == "observation"]
    assert calls and all(c in trained_text for c in calls)
    assert observations and not any(o in trained_text for o in observations)


def test_train_on_all_trains_every_token(tok):
    example = normalise({"instruction": "q", "output": "a"}, "alpaca")
    out = tokenize_example(example, tok, None, train_on_all=True)
    assert out.labels == out.input_ids


def test_text_trains_everything_with_bos_and_eos(tok):
    out = tokenize_example(normalise({"text": "The quick brown fox."}, "text"), tok, None)
    bos, eos = _ids(tok, "<|bos|>", "<|eos|>")
    assert out.input_ids == [bos] + encode(tok, "The quick brown fox.") + [eos]
    assert out.labels == [IGN] + out.input_ids[1:]


def test_prompt_completion_is_raw_text_with_loss_on_completion(tok):
    out = tokenize_example(normalise({"prompt": "Question: two plus two?", "completion": " Answer: four."},
                                     "prompt_completion"), tok, None)
    bos, eos = _ids(tok, "<|bos|>", "<|eos|>")
    prompt, completion = encode(tok, "Question: two plus two?"), encode(tok, " Answer: four.")
    assert out.input_ids == [bos] + prompt + completion + [eos]
    assert out.labels == [IGN] * (1 + len(prompt)) + completion + [eos]


def test_plain_fallback_without_chat_template(plain_tok):
    tok = plain_tok
    example = Example((Turn("system", "S.", False), Turn("user", "hi", False), Turn("assistant", "hello", True),
                       Turn("tool", "obs", False), Turn("assistant", "done", True)), chat=True)
    out = tokenize_example(example, tok, None)
    bos, eos = _ids(tok, "<|bos|>", "<|eos|>")
    p1 = encode(tok, "System: S.\n\nUser: hi\n\nAssistant: ")
    a1 = encode(tok, "hello")
    p2 = encode(tok, "\n\nTool: obs\n\nAssistant: ")
    a2 = encode(tok, "done")
    assert out.input_ids == [bos] + p1 + a1 + [eos] + p2 + a2 + [eos]
    assert out.labels == [IGN] * (1 + len(p1)) + a1 + [eos] + [IGN] * len(p2) + a2 + [eos]


def test_plain_fallback_respects_weight_zero(plain_tok):
    example = Example((Turn("user", "q", False), Turn("assistant", "skip", False), Turn("user", "q", False),
                       Turn("assistant", "keep", True)), chat=True)
    out = tokenize_example(example, plain_tok, None)
    assert plain_tok.decode([x for x in out.labels if x != IGN]) == "keep<|eos|>"


@pytest.mark.parametrize("name, fmt", [("glaive_toolcall_en_demo.json", "sharegpt"),
                                       ("alpaca_en_demo.json", "alpaca")])
def test_prefix_rendering_matches_generation_mask(tok, marker_free_tok, name, fmt):
    with open(peer(name), encoding="utf-8") as fh:
        records = json.load(fh)[:25]
    for record in records:
        example = normalise(record, fmt)
        expected = render_example(example, tok)
        assert render_example(example, marker_free_tok) == expected
        assert render_example(example, SlowView(marker_free_tok)) == expected


def test_generation_runs_that_do_not_line_up_fall_back_to_prefixes(tok, monkeypatch):
    from lora_engine.data import render

    example = normalise({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
                        "openai_chat")
    expected = render_example(example, tok)
    monkeypatch.setattr(render, "_runs", lambda mask: [(0, 1)])  # one run for two answers
    assert render_example(example, tok) == expected


def test_template_that_rejects_the_conversation_is_a_record_problem():
    tok = build_tiny_tokenizer()
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    example = normalise({"instruction": "q", "output": "a"}, "alpaca", 17)
    with pytest.raises(RecordError) as info:
        tokenize_example(example, tok, None)
    assert info.value.problems[0].line == 17 and "must alternate" in info.value.problems[0].message


def test_truncation_keeps_the_start_and_reports_it(tok):
    example = normalise({"instruction": "q", "output": "abcdefghijklmnopqrstuvwxyz " * 4}, "alpaca")
    full = tokenize_example(example, tok, None)
    cut = tokenize_example(example, tok, 10)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:10] and cut.labels == full.labels[:10]
    assert not tokenize_example(example, tok, len(full.input_ids)).truncated
