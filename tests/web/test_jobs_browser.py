"""A real browser (Debian's Chromium) on a live uvicorn server watches a running job's loss curve grow."""

from __future__ import annotations

import time

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server, wait_until
from webapp.adapters.models import Adapter
from webapp.jobs import events
from webapp.jobs.models import Job

from .jobs_factories import add_points, make_base_model, make_dataset, make_job, step_values

# A loaded machine, made deterministic: every websocket the page opens connects a second late.
SLOW_SOCKETS = """(() => {
  const RealWebSocket = window.WebSocket;
  window.WebSocket = class {
    constructor(url) {
      setTimeout(() => {
        this.real = new RealWebSocket(url);
        for (const name of ["onopen", "onmessage", "onclose", "onerror"]) {
          this.real[name] = (event) => this[name] && this[name](event);
        }
      }, 1000);
    }
    send(data) { this.real.send(data); }
    close(code, reason) { if (this.real) this.real.close(code, reason); }
  };
})();"""


def train_points(page) -> int:
    return int(page.get_by_test_id("train-points").inner_text())


@pytest.mark.browser
@pytest.mark.stack
def test_a_running_job_page_draws_history_then_live_points(transactional_db, owner, page, tmp_path):
    job = make_job(owner, suffix="watched")
    job.device = "cpu"
    job.save()
    add_points(job, range(1, 21))  # history, loaded from the metrics API
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{job.id}/")
        assert page.get_by_test_id("job-state").inner_text() == "Running"
        page.wait_for_function("document.querySelector('[data-testid=train-points]').textContent === '20'")
        page.wait_for_function("document.querySelector('[data-testid=live]').textContent === 'live'")
        assert page.locator("#chart-loss canvas").count() == 1
        # On CPU the memory chart shows RSS growth over the process before the model loaded, and says so.
        assert page.locator("#chart-mem .u-title").inner_text().startswith(
            "Memory: RSS growth since before the model loaded (dashed: estimate")
        assert {"RSS growth", "peak RSS growth"} <= set(page.locator("#chart-mem .u-legend th").all_inner_texts())

        # Live points as the worker's recorder sends them: stored first, then emitted.
        for start in (21, 31):
            points = add_points(job, range(start, start + 10))
            events.emit_metrics(job.id, points)
            wait_until(lambda n=start + 9: train_points(page) == n, timeout=15, message=f"{start + 9} points drawn")
        assert page.get_by_test_id("last-loss").inner_text() == f"{3.0 - 40e-3:.4f}"

        # A point the websocket never delivered (a dropped group send): the next one reveals the gap in seq,
        # and the page refetches the missing one from the API instead of drawing a hole; nothing twice.
        add_points(job, [41])
        events.emit_metrics(job.id, add_points(job, [42]))
        wait_until(lambda: train_points(page) == 42, timeout=15, message="the gap refetched")
        assert page.evaluate("window.LoraStudioJob.lastSeq") == 42

        # On a phone (390 px wide) the charts shrink to their column: nothing scrolls the page sideways.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_function("[...document.querySelectorAll('.chart')].every(c => c.querySelector('.u-wrap')"
                               ".getBoundingClientRect().right <= c.getBoundingClientRect().right)")
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")

        # Progress and state arrive live too.
        job.state, job.current_step, job.progress = "succeeded", 42, 1.0
        job.save()
        events.emit_state(job)
        page.wait_for_function("document.querySelector('[data-testid=job-state]').textContent === 'Succeeded'")
        assert page.locator("[data-testid=job-progress] > span").get_attribute("style").startswith("width: 100")
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_the_jobs_list_updates_progress_and_links_to_compare(transactional_db, owner, page, tmp_path):
    first, second = make_job(owner, suffix="rank-8"), make_job(owner, suffix="rank-16", rank=16, alpha=32.0)
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.add_init_script(SLOW_SOCKETS)
        page.goto(f"{base_url}/jobs/")
        row = page.locator(f"tr[data-job-id='{first.id}']")
        assert row.locator("[data-field=progress]").get_attribute("style").startswith("width: 0")
        page.wait_for_function("window.LoraStudioJobs && window.LoraStudioJobs.connections > 0")  # joined
        first.current_step, first.progress, first.eta_seconds = 500, 0.5, 90
        events.emit_state(first)
        wait_until(lambda: row.locator("[data-field=steps]").inner_text() == "500 / 1000", timeout=15,
                   message="live progress")
        assert row.locator("[data-field=progress]").get_attribute("style").startswith("width: 50")
        assert row.locator("[data-field=eta]").inner_text() == "1m 30s"
        page.check(f"input[value='{first.id}']")
        page.check(f"input[value='{second.id}']")
        page.get_by_test_id("compare-selected").click()
        page.wait_for_url(lambda url: "/compare/" in url)
        from urllib.parse import parse_qs, urlparse

        chosen = parse_qs(urlparse(page.url).query)["jobs"][0].split(",")
        assert sorted(chosen) == sorted([str(first.id), str(second.id)])
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_the_jobs_list_reads_a_silent_job_from_the_database(transactional_db, owner, page, tmp_path):
    """A job ends and its push is lost (Redis was down): nothing follows it on the socket, so the row of a job
    not yet ended that hears nothing for Studio's QUIET_MS (5 s) is read from the database. Ended jobs are not;
    queued ones, silent until a worker takes them, only every 30 s (QUEUED_QUIET_MS)."""
    silent, ended = make_job(owner, suffix="lost-push"), make_job(owner, suffix="done", state="succeeded")
    waiting = make_job(owner, suffix="waiting", state="queued")
    server, base_url = start_asgi_server(tmp_path)
    asked: list[str] = []
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.on("request", lambda request: asked.append(request.url) if "/api/jobs/" in request.url else None)
        page.goto(f"{base_url}/jobs/")
        page.wait_for_function("window.LoraStudioJobs && window.LoraStudioJobs.connections > 0")
        row = page.locator(f"tr[data-job-id='{silent.id}']")
        assert row.locator("[data-field=state]").inner_text() == "Running"

        silent.state, silent.current_step, silent.progress = "succeeded", 1000, 1.0
        silent.save()  # ... and no push: the page has nothing to go by but the database

        wait_until(lambda: row.locator("[data-field=state]").inner_text() == "Succeeded", timeout=15,
                   message="the silent job's row read from the database")
        assert row.locator("[data-field=steps]").inner_text() == "1000 / 1000"
        assert row.locator("[data-field=eta]").inner_text() == "–"
        checks = len(asked)
        time.sleep(6)  # longer than QUIET_MS: an ended job is not asked about again
        assert len(asked) == checks and not [url for url in asked if str(ended.id) in url], asked
        assert not [url for url in asked if str(waiting.id) in url], asked  # the page is not 30 s old yet
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_a_job_page_reads_a_silent_job_from_the_database(transactional_db, owner, page, tmp_path):
    """The job page's side of the same: the job ends and its pushes are lost; the page catches up by itself."""
    job = make_job(owner, suffix="lost-push")
    add_points(job, range(1, 11))
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{job.id}/")
        page.wait_for_function("document.querySelector('[data-testid=live]').textContent === 'live'")
        assert train_points(page) == 10

        add_points(job, range(11, 21))
        job.state, job.current_step, job.progress = "succeeded", 20, 1.0
        job.save()  # ... and no push

        page.wait_for_function("document.querySelector('[data-testid=job-state]').textContent === 'Succeeded'")
        wait_until(lambda: train_points(page) == 20, timeout=5, message="the points stored meanwhile drawn")
    finally:
        server.stop()


# What the page draws on its canvases (uPlot draws axis labels there, not in the DOM), by chart id.
RECORD_CANVAS_TEXT = """(() => {
  window.drawnText = {};
  const fillText = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    const chart = this.canvas.closest(".chart");
    if (chart) (window.drawnText[chart.id] = window.drawnText[chart.id] || []).push(String(text));
    return fillText.call(this, text, ...rest);
  };
})();"""


def warmup_values(step: int) -> dict:
    """A train point whose learning rate warms up linearly to 2e-4 over 20 steps."""
    return {**step_values(step), "learning_rate": 2e-4 * min(step, 20) / 20}


@pytest.mark.browser
@pytest.mark.stack
def test_the_new_job_form_shows_a_memory_estimate(transactional_db, owner, page, tmp_path):
    make_dataset(owner)
    make_base_model(owner)  # the only one: the form chooses it, so the estimate is asked for at once
    server, base_url = start_asgi_server(tmp_path)
    asked: list[str] = []
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.on("request", lambda request: asked.append(request.url) if "estimate" in request.url else None)
        page.goto(f"{base_url}/jobs/new/")
        status = page.locator('[data-field="estimate-status"]')
        wait_until(lambda: status.inner_text().startswith("Predicted peak memory"), timeout=15,
                   message=f"the estimate (the page says: {status.inner_text()!r})")
        assert page.get_by_test_id("estimate-lora").inner_text().endswith("B")
        assert all(url.startswith(f"{base_url}/api/jobs/estimate?") for url in asked), asked
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_a_job_page_opened_while_queued_labels_its_charts_by_what_arrives(transactional_db, owner, page,
                                                                          tmp_path):
    """The memory readings' kind is known only once a worker has the job (its device); the learning rate's
    axis shows values around 2e-4, not a column of zeros."""
    job = make_job(owner, suffix="waiting", state="queued")
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.add_init_script(RECORD_CANVAS_TEXT)
        page.goto(f"{base_url}/jobs/{job.id}/")
        page.wait_for_function("window.LoraStudioJob && window.LoraStudioJob.connections > 0")
        assert page.locator("#chart-mem .u-title").inner_text().startswith("Memory (dashed")

        job.state, job.device = "running", "cpu"  # a worker took it (webapp.jobs.leases.record_run_info)
        job.save()
        events.emit_state(job)
        events.emit_metrics(job.id, add_points(job, range(1, 31), values=warmup_values))
        wait_until(lambda: train_points(page) == 30, timeout=15, message="the points drawn")
        mem_title = page.locator("#chart-mem .u-title")
        wait_until(lambda: mem_title.inner_text().startswith("Memory: RSS growth since before the model loaded"),
                   timeout=15, message=f"the memory chart relabelled (it says {mem_title.inner_text()!r})")
        assert {"RSS growth", "peak RSS growth"} <= set(page.locator("#chart-mem .u-legend th").all_inner_texts())
        assert page.locator('[data-field="peak-measure"]').inner_text().startswith("(RSS growth")

        page.wait_for_function("(window.drawnText['chart-lr'] || []).some((t) => t === '0.0002' || t === '2e-4')")
        drawn = set(page.evaluate("window.drawnText['chart-lr']"))
        assert {"0.0001", "1e-4"} & drawn, drawn  # uPlot's own labels read "0" at every tick
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_a_job_page_shows_the_adapter_when_the_job_ends(transactional_db, owner, page, tmp_path):
    """Launched from the form ("Job queued."), watched to the end: the page shows the finished job's adapter
    without a reload, drops the banner and turns the live dot off."""
    make_dataset(owner)
    make_base_model(owner)
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/new/")
        page.fill("input[name=suffix]", "watched-to-the-end")
        page.click("#job-form button[type=submit]")
        page.wait_for_url(lambda url: "/jobs/new/" not in url)
        job = Job.objects.get(suffix="watched-to-the-end")
        assert page.locator(".messages").inner_text() == "Job queued."
        page.wait_for_function("window.LoraStudioJob && window.LoraStudioJob.connections > 0")
        page.evaluate("window.notReloaded = true")

        job.state, job.device = "running", "cpu"
        job.save()
        events.emit_state(job)
        events.emit_metrics(job.id, add_points(job, range(1, 11)))
        wait_until(lambda: train_points(page) == 10, timeout=15, message="the points drawn")
        assert page.get_by_test_id("live").inner_text() == "live"

        adapter = Adapter.objects.create(owner=owner, job=job, name="watched-adapter", storage_path="adapters/x",
                                         base_model=job.base_model, rank=job.rank, alpha=job.alpha)
        job.state, job.progress = "succeeded", 1.0  # webapp.jobs.actions.finish_job: adapter, then the state
        job.save()
        events.emit_state(job)
        page.get_by_test_id("adapter-link").wait_for()
        assert page.get_by_test_id("adapter-link").get_attribute("href") == f"/adapters/{adapter.id}/"
        assert page.get_by_test_id("adapter-download").get_attribute("href") == f"/adapters/{adapter.id}/download"
        assert page.locator(".messages").count() == 0
        assert page.get_by_test_id("live").inner_text() == "ended"
        assert "on" not in page.get_by_test_id("live").get_attribute("class").split()
        assert page.evaluate("window.notReloaded === true")

        page.get_by_test_id("adapter-playground").click()  # the playground opens with this adapter ticked
        page.wait_for_url(lambda url: "/playground/" in url)
        assert page.get_by_label("watched-adapter (r=8)").is_checked()
    finally:
        server.stop()


@pytest.mark.browser
@pytest.mark.stack
def test_the_new_job_forms_targets_follow_the_chosen_base_model(transactional_db, owner, page, tmp_path):
    from lora_engine.tiny import tiny_config
    from webapp.basemodels.models import BaseModel

    make_dataset(owner)
    llama = make_base_model(owner)
    gpt2 = BaseModel.objects.create(owner=owner, name="tiny-gpt2", source=BaseModel.Source.LOCAL,
                                    local_path="/nowhere", model_type="gpt2", config=tiny_config("gpt2").to_dict())
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/new/")
        targets = page.locator("input[name=targets]")
        assert targets.input_value() == "q_proj,v_proj"
        page.select_option("select[name=base_model]", str(gpt2.id))
        assert targets.input_value() == "c_attn"
        page.select_option("select[name=base_model]", str(llama.id))
        assert targets.input_value() == "q_proj,v_proj"
        targets.fill("all-linear")  # typed targets stay when the model changes
        page.select_option("select[name=base_model]", str(gpt2.id))
        assert targets.input_value() == "all-linear"
    finally:
        server.stop()
