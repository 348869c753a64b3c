"""A real browser on a live server with a real worker: ask once, see the base and two adapters answer side by side."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.playground import make_adapter_dir, save_base, upload
from tests.support.processes import start_asgi_server, start_worker
from tests.support.workers import wait_for_worker
from webapp.basemodels.actions import register_local_model
from webapp.playground.models import PlaygroundSession


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
        page.wait_for_function("[...document.querySelectorAll('[data-testid=answer]')]"
                               ".filter((a) => a.dataset.state === 'done').length === 3", timeout=120_000)
        session = PlaygroundSession.objects.get()
        shown = [a.inner_text() for a in page.query_selector_all("[data-testid=answer] .pg-text")]
        assert shown == [o["text"] for o in session.outputs]
        titles = [h.inner_text() for h in page.query_selector_all("[data-testid=answer] h3")]
        assert titles[0] == "tiny-browser (base)" and sorted(titles[1:]) == ["mlp", "qv"]
        assert len({o["text"] for o in session.outputs}) == 3
        assert errors == []
    finally:
        worker.kill()
        worker.stop()
        server.stop()
