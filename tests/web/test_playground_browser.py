"""A real browser on a live server with a real worker: ask, see the base and two adapters answer side by side, then
follow up and see each column answer its own conversation."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.playground import make_adapter_dir, save_base, upload
from tests.support.processes import start_asgi_server, start_worker
from tests.support.workers import wait_for_worker
from webapp.basemodels.actions import register_local_model
from webapp.playground.models import PlaygroundSession


def expected_follow_up_answers(base_dir, session: PlaygroundSession) -> list[str]:
    """What the engine answers (greedy, in this process) to each column's own conversation."""
    from lora_engine.playground import IncrementalDecoder, MultiAdapterModel, render_messages, stop_token_ids
    from lora_engine.quant import load_tokenizer
    from webapp.adapters.models import Adapter

    tokenizer = load_tokenizer(str(base_dir))
    model = MultiAdapterModel.from_pretrained(
        str(base_dir), {str(a.pk): a.path for a in Adapter.objects.filter(pk__in=session.adapter_ids)})
    answers = []
    for output in session.outputs:
        model.activate(None if output["key"] == "base" else output["key"])
        decoder = IncrementalDecoder(tokenizer)
        for token in model.generate(render_messages(tokenizer, session.messages_for(output["key"])),
                                    session.settings["max_new_tokens"], temperature=0.0,
                                    stop_ids=stop_token_ids(tokenizer, model.model)):
            decoder.push(token)
        answers.append(decoder.text)
    return answers


def all_done(count: int) -> str:
    return ("[...document.querySelectorAll('[data-testid=answer]')]"
            f".filter((a) => a.dataset.state === 'done').length === {count}")


@pytest.mark.browser
@pytest.mark.stack
def test_asking_shows_three_answers_side_by_side(transactional_db, owner, page, tmp_path):
    base_dir = save_base(tmp_path / "base")
    base_model = register_local_model(owner, "tiny-browser", str(base_dir))
    for name, targets, seed in (("qv", ("q_proj", "v_proj"), 1), ("mlp", ("up_proj",), 2)):
        upload(owner, base_model, make_adapter_dir(base_dir, tmp_path / name, 2, targets, seed), name)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    server, base_url = start_asgi_server(tmp_path)
    worker = start_worker(tmp_path, name="playground-browser")
    try:
        wait_for_worker(worker)
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/playground/")
        page.get_by_label("qv (r=2)").check()
        page.get_by_label("mlp (r=2)").check()
        page.fill("#pg-prompt", "Say something")
        page.fill("input[name=temperature]", "0")
        page.fill("input[name=max_new_tokens]", "12")
        page.click("#pg-run")
        page.wait_for_url("**/playground/*-*/")
        page.wait_for_function(all_done(3), timeout=120_000)
        session = PlaygroundSession.objects.get()
        shown = [a.inner_text() for a in page.query_selector_all("[data-testid=answer] .pg-text")]
        assert shown == [o["text"] for o in session.outputs]
        titles = [h.inner_text() for h in page.query_selector_all("[data-testid=answer] h3")]
        assert titles[0] == "tiny-browser (base)" and sorted(titles[1:]) == ["mlp", "qv"]
        assert len({o["text"] for o in session.outputs}) == 3

        page.fill("#pg-follow-up", "Tell me more")  # each column answers its own conversation so far
        page.click("#pg-send")
        page.wait_for_function(f"location.pathname !== '/playground/{session.id}/'")
        page.wait_for_function(all_done(3), timeout=120_000)
        follow_up = PlaygroundSession.objects.get(parent=session)
        earlier = [a.inner_text() for a in page.query_selector_all("[data-testid=earlier-answer]")]
        assert earlier == [o["text"] for o in session.outputs]  # each column shows its own first answer
        shown = [a.inner_text() for a in page.query_selector_all("[data-testid=answer] .pg-text")]
        assert shown == [o["text"] for o in follow_up.outputs] == expected_follow_up_answers(base_dir, follow_up)
        page.click("#pg-new-chat")
        assert page.is_hidden("#pg-result") and page.url == f"{base_url}/playground/"
        assert errors == []
    finally:
        worker.kill()
        worker.stop()
        server.stop()
