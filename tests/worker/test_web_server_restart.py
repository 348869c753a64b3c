"""The web server (uvicorn) is killed while a browser watches a training job, and started again on its port.

What a user would notice: the page says it is offline, reconnects by itself once the server is back, and its
chart ends up with every step exactly once — the steps trained while nobody could push them are filled in
from the database, none is drawn twice.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import PASSWORD
from tests.reliability.results import record
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server, wait_until
from tests.support.workers import wait_for_worker
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import assert_one_record_per_step, wait_for_end
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, MetricPoint

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.browser]

STEPS = 60
DOWN_SECONDS = 4.0


def page_state(page) -> dict:
    return page.evaluate("({points: LoraStudioJob.trainPoints, connections: LoraStudioJob.connections,"
                         " live: document.querySelector('[data-testid=live]').textContent})")


def test_a_restarted_web_server_loses_no_point_on_a_watching_page(transactional_db, owner, base_model, dataset,
                                                                   workers, page, tmp_path):
    job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": STEPS, "save_every": 0},
                     suffix="web-restart")
    worker = workers("w1", wait=False)  # a worker takes a while to import torch: start it first
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{job.id}/")
        wait_until(lambda: page_state(page)["live"] == "live", timeout=30, message="the page's socket")
        wait_for_worker(worker)
        wait_until(lambda: page_state(page)["points"] >= 3, timeout=90, message="live points on the chart")

        server.kill()  # SIGKILL: no goodbye to the sockets, training goes on
        killed = time.monotonic()
        drawn_before = page_state(page)["points"]
        wait_until(lambda: page_state(page)["live"] == "offline", timeout=10, message="the page to notice")
        time.sleep(DOWN_SECONDS)
        server, _ = start_asgi_server(tmp_path, port=int(base_url.rsplit(":", 1)[1]))
        back = time.monotonic()
        wait_until(lambda: page_state(page)["connections"] >= 2, timeout=60, message="the page to reconnect")
        reconnect_seconds = time.monotonic() - back
        offline_seconds = time.monotonic() - killed
        missed = MetricPoint.objects.filter(job=job, split="train").count() - drawn_before
        wait_until(lambda: page_state(page)["points"] >= drawn_before + missed, timeout=30,
                   message="the steps trained while offline on the chart")
        fill_seconds = time.monotonic() - killed - offline_seconds

        wait_for_end(job, timeout=180)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert_one_record_per_step(job)
        wait_until(lambda: page_state(page)["points"] == STEPS, timeout=30, message="every step on the chart")
        page.wait_for_function("document.querySelector('[data-testid=job-state]').textContent === 'Succeeded'")
        # the chart's own data: every step once, in order, and the page has every stored point's seq
        assert page.evaluate("LoraStudioJob.trainSteps") == list(range(1, STEPS + 1))
        assert page.evaluate("LoraStudioJob.lastSeq") == job.last_seq
    finally:
        server.stop()
    assert missed > 0, "no step was trained while the page was offline: the test proved nothing"
    record("fault_figures", test="test_a_restarted_web_server_loses_no_point_on_a_watching_page",
           figures={"seconds offline": round(offline_seconds, 1),
                    "seconds to reconnect after the restart": round(reconnect_seconds, 1),
                    "steps missed while offline, filled after reconnect": missed,
                    "seconds to fill them": round(fill_seconds, 1)})
