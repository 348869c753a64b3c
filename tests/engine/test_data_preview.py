"""Previews: the first rows with each token's text and whether the loss sees it."""

from __future__ import annotations

import json

from lora_engine.data import preview_rows
from lora_engine.data.preview import token_pieces
from lora_engine.tiny import build_tiny_tokenizer

from ._data_helpers import peer, write_jsonl


def test_preview_alpaca_highlights_the_answer():
    tok = build_tiny_tokenizer()
    rows = preview_rows(peer("alpaca_en_demo.json"), tok, n=3)
    with open(peer("alpaca_en_demo.json"), encoding="utf-8") as fh:
        records = json.load(fh)[:3]
    assert [r["line"] for r in rows] == [2, 7, 12] and all(r["format"] == "alpaca" for r in rows)
    for row, record in zip(rows, records, strict=True):
        ids = tok.apply_chat_template(
            [{"role": t["role"], "content": t["content"]} for t in row["turns"]], tokenize=True)
        assert "".join(p["text"] for p in row["tokens"]) == tok.decode(ids)  # pieces add up to the sequence
        trained = "".join(p["text"] for p in row["tokens"] if p["trained"])
        assert trained == record["output"] + "<|eos|>"
        assert row["turns"][-1] == {"role": "assistant", "content": record["output"], "trainable": True}
        assert row["trained_tokens"] > 0 and row["num_tokens"] >= len(row["tokens"])


def test_preview_plain_fallback_and_row_limits(tmp_path):
    tok = build_tiny_tokenizer(chat_template=False)
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": ""},
                                              {"instruction": "Hi", "output": "Hello"}] * 4)
    rows = preview_rows(path, tok, n=2)
    assert [r["line"] for r in rows] == [2, 4]  # the rows with problems are skipped
    text = "".join(p["text"] for p in rows[0]["tokens"])
    assert text == "<|bos|>User: Hi\n\nAssistant: Hello<|eos|>"
    assert "".join(p["text"] for p in rows[0]["tokens"] if p["trained"]) == "Hello<|eos|>"


def test_token_pieces_keep_multibyte_characters_whole():
    tok = build_tiny_tokenizer()
    text = "naïve café 中文 ok"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = token_pieces(ids, [True] * len(ids), tok)
    assert "".join(p["text"] for p in pieces) == text
    assert not any("\ufffd" in p["text"] for p in pieces)
    assert len(pieces) < len(ids)  # the byte tokens of 中 and 文 were merged into whole characters


def test_preview_truncates_like_training():
    tok = build_tiny_tokenizer()
    row = preview_rows(peer("c4_demo.jsonl"), tok, n=1, max_seq_len=16)[0]
    assert row["truncated"] and row["num_tokens"] == 16
