"""A real browser uploads data sets through the page (chunked XHR with a progress bar) and sees the preview."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server
from webapp.datasets.models import Dataset

from ._datasets_helpers import PEERS, peer_file, register_tiny_model, stored_dataset_files


def tick_boxes(page, testid: str) -> list[dict]:
    return page.evaluate(f"""[...document.querySelectorAll('[data-testid={testid}] span')].map(e => {{
        const r = e.getBoundingClientRect();
        return {{text: e.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom}}; }})""")


NO_ANSWER = {"messages": [{"role": "user", "content": "anyone?"}]}
CHAT_OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.browser
def test_upload_through_the_page_and_see_the_preview(transactional_db, owner, page, tmp_path):
    peer_file("identity.json")
    register_tiny_model(owner)
    bad_file = tmp_path / "broken.jsonl"
    bad_file.write_text("".join(json.dumps(row) + "\n" for row in (CHAT_OK, NO_ANSWER)))
    server, base_url = start_asgi_server(tmp_path, PYTHONWARNINGS="ignore")
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/datasets/")

        page.get_by_test_id("file-input").set_input_files(str(bad_file))  # the drop zone's file input
        error = page.get_by_test_id("upload-error")
        error.wait_for(state="visible")
        assert "line 2" in error.inner_text() and "no answer" in error.inner_text()
        summary = page.locator("#upload-error-message").inner_text()
        assert summary == "One problem found; fix it and upload the file again:"
        assert error.inner_text().count("no answer") == 1  # listed once, not in the summary too
        assert "failed" in page.locator("#upload-progress").get_attribute("class")
        assert not Dataset.objects.exists()

        page.get_by_test_id("file-input").set_input_files(str(PEERS / "identity.json"))
        page.wait_for_url(f"{base_url}/datasets/*/**")
        dataset = Dataset.objects.get()
        assert page.url.endswith(f"/datasets/{dataset.id}/")
        assert page.get_by_test_id("format").inner_text() == "alpaca"
        assert page.get_by_test_id("rows").inner_text() == "91"
        preview = page.get_by_test_id("preview")
        assert preview.get_by_test_id("preview-row").count() == 5
        assert "Who are you?" in preview.inner_text()
        trained = page.locator("[data-testid=tokens]").first.locator(".token.trained")
        assert trained.count() > 0 and "{{name}}" in "".join(trained.all_inner_texts())
        assert page.get_by_test_id("histogram").locator(".bar").count() > 0
        # Its axes are labelled, with tick values apart from one another; the sequence length (512 by default,
        # past the longest row) is marked, right of the 400-token tick, and everything fits on a phone.
        figure = page.get_by_test_id("histogram-figure")
        assert figure.locator(".x-title").inner_text() == "tokens per row"
        assert figure.locator(".y-title").inner_text() == "rows"
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 844})
            x_ticks = tick_boxes(page, "histogram-x-ticks")
            assert [t["text"] for t in x_ticks] == ["0", "100", "200", "300", "400", "500"]
            assert all(a["right"] < b["left"] for a, b in pairwise(x_ticks))
            y_ticks = tick_boxes(page, "histogram-y-ticks")
            assert y_ticks[0]["text"] == "0" and all(a["top"] > b["bottom"] for a, b in pairwise(y_ticks))
            mark = page.get_by_test_id("seq-mark")
            assert mark.inner_text() == "max 512" and mark.bounding_box()["x"] > x_ticks[4]["right"]
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        assert stored_dataset_files() == [dataset.storage_path.removeprefix("datasets/")]
    finally:
        server.stop()


@pytest.mark.browser
def test_drop_a_file_on_the_drop_zone(transactional_db, owner, page, tmp_path):
    server, base_url = start_asgi_server(tmp_path, PYTHONWARNINGS="ignore")
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/datasets/")
        content = json.dumps(CHAT_OK) + "\n"
        transfer = page.evaluate_handle(
            """(text) => { const dt = new DataTransfer();
                          dt.items.add(new File([text], "dropped.jsonl", {type: "application/jsonl"})); return dt; }""",
            content)
        page.get_by_test_id("dropzone").dispatch_event("drop", {"dataTransfer": transfer})
        page.wait_for_url(f"{base_url}/datasets/*/**")
        assert Dataset.objects.get().name == "dropped.jsonl"
        assert page.get_by_test_id("format").inner_text() == "openai_chat"
    finally:
        server.stop()
