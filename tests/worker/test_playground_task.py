"""Stack test: a real Celery worker answers a playground prompt with the base and two adapters (one loaded base),
streaming the answers over Redis to the page's websocket and storing them."""

from __future__ import annotations

import json
import time

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.support.playground import make_adapter_dir, save_base, upload
from tests.support.processes import start_worker
from tests.support.workers import wait_for_worker
from webapp.asgi import application
from webapp.basemodels.actions import register_local_model
from webapp.playground import actions
from webapp.playground.models import PlaygroundSession

SETTINGS = {"max_new_tokens": 24, "temperature": 0, "top_p": 1.0, "seed": 0}


def expected_answers(base_dir, adapter_dirs: dict[str, object], prompt: str) -> dict[str, str]:
    """What the engine answers in this process (greedy), per answer key."""
    from lora_engine.playground import IncrementalDecoder, MultiAdapterModel, render_prompt, stop_token_ids
    from lora_engine.quant import load_tokenizer

    tokenizer = load_tokenizer(str(base_dir))
    model = MultiAdapterModel.from_pretrained(str(base_dir), adapter_dirs)
    prompt_ids = render_prompt(tokenizer, prompt)
    answers = {}
    for key in ["base", *adapter_dirs]:
        model.activate(None if key == "base" else key)
        decoder = IncrementalDecoder(tokenizer)
        for token in model.generate(prompt_ids, SETTINGS["max_new_tokens"], temperature=0.0,
                                    stop_ids=stop_token_ids(tokenizer, model.model)):
            decoder.push(token)
        answers[key] = decoder.text
    return answers


def test_a_worker_answers_with_two_adapters_streaming(transactional_db, owner, tmp_path):
    base_dir = save_base(tmp_path / "base")
    base_model = register_local_model(owner, "tiny-playground-stack", str(base_dir))
    qv_dir = make_adapter_dir(base_dir, tmp_path / "qv", 4, ("q_proj", "v_proj"), seed=1)
    mlp_dir = make_adapter_dir(base_dir, tmp_path / "mlp", 2, ("up_proj",), seed=2)
    adapters = [upload(owner, base_model, qv_dir, "qv"), upload(owner, base_model, mlp_dir, "mlp")]
    prompt = "What does a low-rank update change?"
    session = actions.create_session(owner, base_model, adapters, prompt, SETTINGS)  # queued in Redis now
    client = Client()
    client.force_login(owner)
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost"),
               (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]
    streamed: dict[str, str] = {}
    final: dict = {}

    async def watch():
        comm = WebsocketCommunicator(application, f"/ws/playground/{session.id}/", headers=headers)
        connected, _ = await comm.connect(timeout=10)
        assert connected
        worker = start_worker(tmp_path, name="playground")  # started after the page is watching
        try:
            wait_for_worker(worker)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                message = json.loads(await comm.receive_from(timeout=180))
                if message["type"] == "tokens":
                    assert message["offset"] == len(streamed.get(message["key"], ""))  # no piece lost or repeated
                    streamed[message["key"]] = streamed.get(message["key"], "") + message["text"]
                elif message["session"]["state"] in ("succeeded", "failed"):
                    final.update(message["session"])
                    break
        finally:
            await comm.disconnect()
            worker.kill()
            worker.stop()
            print(worker.log()[-4000:])

    async_to_sync(watch)()
    assert final["state"] == "succeeded", final.get("error_message")
    stored = PlaygroundSession.objects.get(pk=session.id)
    assert stored.state == "succeeded" and stored.prompt_tokens > 0
    keys = ["base", str(adapters[0].id), str(adapters[1].id)]
    assert [o["key"] for o in stored.outputs] == keys and all(o["state"] == "done" for o in stored.outputs)
    texts = {o["key"]: o["text"] for o in stored.outputs}
    assert texts == expected_answers(base_dir, {k: a.path for k, a in zip(keys[1:], adapters, strict=True)}, prompt)
    assert len(set(texts.values())) == 3  # each adapter answered differently from the base and from each other
    assert streamed == {k: t for k, t in texts.items() if t}  # the page saw every answer arrive piece by piece
