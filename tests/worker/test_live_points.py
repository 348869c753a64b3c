"""The whole path of a step: real worker -> recorder -> PostgreSQL and -> channel layer -> uvicorn -> a websocket
client. Every step reaches both the database and the watching client exactly once."""

from __future__ import annotations

import json
import threading

import pytest
from websockets.sync.client import connect

from tests.support.processes import start_asgi_server
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import assert_one_record_per_step, wait_for_end
from webapp.accounts.keys import create_api_key
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def watch(url: str, received: list[dict], connected: threading.Event, done: threading.Event) -> None:
    """Collect every pushed point until the job's state is terminal (what a script watching a job does)."""
    with connect(url, open_timeout=60) as socket:
        connected.set()
        while True:
            message = json.loads(socket.recv(timeout=120))
            if message["type"] == "points":
                received.extend(message["points"])
            elif message["type"] == "state" and message["job"]["state"] in ("succeeded", "failed", "cancelled"):
                done.set()
                return


def test_every_step_reaches_the_database_and_a_websocket_client_once(transactional_db, owner, base_model, dataset,
                                                                     workers, tmp_path):
    job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 40, "save_every": 20}, suffix="live")
    server, base_url = start_asgi_server(tmp_path)
    received: list[dict] = []
    connected, done = threading.Event(), threading.Event()
    key = create_api_key(owner)[1]
    url = base_url.replace("http://", "ws://") + f"/ws/jobs/{job.id}/?key={key}"
    watcher = threading.Thread(target=watch, args=(url, received, connected, done), daemon=True)
    try:
        watcher.start()
        assert connected.wait(60), "the websocket did not connect"
        workers("w1")
        wait_for_end(job, timeout=240)
        assert done.wait(30), "the socket never said the job ended"
    finally:
        server.stop()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert_one_record_per_step(job)
    train_steps = [p["step"] for p in received if p["split"] == "train"]
    assert sorted(train_steps) == list(range(1, 41))  # every step, none twice
    seqs = [p["seq"] for p in received]
    assert len(seqs) == len(set(seqs)) == job.last_seq
