"""The metrics API (paging, downsampling, raw downloads), the memory estimate API, and the one emitter."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client, override_settings

from webapp.jobs import events
from webapp.jobs.downsample import downsample

from .jobs_factories import add_points, make_base_model, make_job, step_values


@pytest.fixture
def job(owner):
    return make_job(owner, suffix="metrics-run")


def metrics(client: Client, job, query: str = "", status: int = 200) -> dict:
    response = client.get(f"/api/jobs/{job.id}/metrics{query}")
    assert response.status_code == status, response.content
    return response.json()


def test_metrics_it_works(owner_client, job):
    add_points(job, range(1, 11))
    add_points(job, [10], split="eval")
    body = metrics(owner_client, job)
    assert [p["seq"] for p in body["points"]] == list(range(1, 12))
    assert body["points"][0] == {"seq": 1, "step": 1, "split": "train", "values": step_values(1)}
    assert body["points"][-1]["split"] == "eval"
    assert (body["last_seq"], body["has_more"], body["downsampled"]) == (11, False, False)
    assert body["state"]["state"] == "running" and body["state"]["last_seq"] == 11


def test_metrics_pages_by_seq_and_step(api, job):
    add_points(job, range(1, 101))
    first = metrics(api, job, "?limit=40")
    assert len(first["points"]) == 40 and first["has_more"] and first["last_seq"] == 40
    second = metrics(api, job, f"?after_seq={first['last_seq']}&limit=40")
    assert [p["seq"] for p in second["points"]] == list(range(41, 81))
    rest = metrics(api, job, "?after_seq=80&limit=40")
    assert len(rest["points"]) == 20 and not rest["has_more"] and rest["last_seq"] == 100
    assert metrics(api, job, "?after_seq=100")["points"] == []
    assert metrics(api, job, "?after_seq=100")["last_seq"] == 100  # nothing new: the cursor stays
    by_step = metrics(api, job, "?after_step=95")
    assert [p["step"] for p in by_step["points"]] == [96, 97, 98, 99, 100]


def test_metrics_downsampling_keeps_spikes(api, job):
    def values(step):
        loss = 50.0 if step == 4321 else (0.01 if step == 7777 else 2.0 + (step % 10) * 0.01)
        return {**step_values(step), "loss": loss, "grad_norm": 99.0 if step == 123 else 1.0}

    add_points(job, range(1, 10_001), values=values)
    add_points(job, range(100, 10_001, 100), split="eval")
    body = metrics(api, job, "?max_points=500")
    points = body["points"]
    assert body["downsampled"] and body["total_points"] == 10_100 and len(points) <= 500
    assert body["last_seq"] == 10_100  # every point up to here is covered: live points continue after it
    steps = [p["step"] for p in points if p["split"] == "train"]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 10_000
    assert {4321, 7777, 123} <= set(steps)  # the max, the min, and a grad-norm explosion survive
    assert [p["seq"] for p in points] == sorted(p["seq"] for p in points)
    assert sum(p["split"] == "eval" for p in points) == 100  # eval points fit their budget: all kept
    small = metrics(api, job, "?after_seq=10090&max_points=500")
    assert not small["downsampled"] and len(small["points"]) == 10


def test_downsample_is_a_subsequence_within_budget():
    points = [{"seq": i, "step": i, "split": "train", "values": {"loss": (i * 7919) % 1000}} for i in range(5000)]
    for budget in (10, 99, 1000):
        kept = downsample(points, budget, ("loss",))
        assert len(kept) <= budget and kept[0] is points[0] and kept[-1] is points[-1]
        assert [p["seq"] for p in kept] == sorted({p["seq"] for p in kept})
    assert downsample(points[:50], 100, ("loss",)) == points[:50]


def test_metrics_validates_ownership(stranger_client, job):
    add_points(job, range(1, 5))
    response = stranger_client.get(f"/api/jobs/{job.id}/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    for suffix in ("metrics.csv", "metrics.jsonl", "log"):
        assert stranger_client.get(f"/api/jobs/{job.id}/{suffix}").status_code == 404
    assert stranger_client.get(f"/api/jobs/{job.id}").status_code == 404
    assert Client().get(f"/api/jobs/{job.id}/metrics").status_code == 401


def test_metrics_rejects_bad_parameters(api, job):
    for query, param in (("?after_seq=x", "after_seq"), ("?after_seq=-1", "after_seq"), ("?max_points=1", "max_points"),
                         ("?limit=0", "limit"), ("?split=test", "split"), ("?after_seq=1&after_step=1", "after_step")):
        body = metrics(api, job, query, status=400)
        assert body["error"]["param"] == param and param in body["error"]["message"]


def test_raw_downloads(api, job):
    add_points(job, range(1, 2501))
    add_points(job, [2500], split="eval")
    response = api.get(f"/api/jobs/{job.id}/metrics.csv")
    assert response.status_code == 200 and 'filename="metrics-run-metrics.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 2501 and rows[0]["seq"] == "1" and float(rows[0]["loss"]) == step_values(1)["loss"]
    assert rows[-1]["split"] == "eval" and rows[-1]["eval_loss"] == "2.5" and rows[-1]["loss"] == ""
    response = api.get(f"/api/jobs/{job.id}/metrics.jsonl")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2501 and json.loads(lines[1]) == {"seq": 2, "split": "train", **step_values(2)}


def test_state_and_log(api, job):
    job.events.create(message="Job created.")
    job.events.create(message="Training started on cpu.", level="info")
    assert api.get(f"/api/jobs/{job.id}").json()["state"] == "running"
    log = api.get(f"/api/jobs/{job.id}/log").json()["data"]
    assert [e["message"] for e in log] == ["Job created.", "Training started on cpu."]
    after = api.get(f"/api/jobs/{job.id}/log?after_id={log[0]['id']}").json()["data"]
    assert [e["message"] for e in after] == ["Training started on cpu."]


def test_memory_estimate_it_works(api, owner):
    model = make_base_model(owner)
    body = api.get(f"/api/jobs/estimate?base_model={model.id}&rank=8&targets=q_proj,v_proj&batch_size=2"
                   "&max_seq_len=128").json()
    assert body["full"]["total"] > body["lora"]["total"] > body["qlora"]["total"] > 0
    assert body["lora_trainable_params"] == 2 * 8 * ((64 + 64) + (64 + 32))  # q_proj 64->64, v_proj 64->32
    bigger = api.get(f"/api/jobs/estimate?base_model={model.id}&rank=8&batch_size=8&max_seq_len=128").json()
    assert bigger["lora"]["activations"] > body["lora"]["activations"]
    bad = api.get(f"/api/jobs/estimate?base_model={model.id}&rank=zero")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rank"


def test_memory_estimate_without_targets_uses_the_models_attention_projections(api, owner):
    from lora_engine.tiny import tiny_config
    from webapp.basemodels.models import BaseModel

    gpt2 = BaseModel.objects.create(owner=owner, name="tiny-gpt2", source=BaseModel.Source.LOCAL,
                                    local_path="/nowhere", model_type="gpt2", config=tiny_config("gpt2").to_dict())
    body = api.get(f"/api/jobs/estimate?base_model={gpt2.id}&rank=8").json()
    assert body["lora_trainable_params"] == 2 * 8 * (64 + 3 * 64)  # c_attn 64->192 in two layers


def test_memory_estimate_validates_ownership(stranger_client, owner):
    model = make_base_model(owner)
    assert stranger_client.get(f"/api/jobs/estimate?base_model={model.id}").status_code == 404
    public = make_base_model(owner, name="demo", public=True)
    assert stranger_client.get(f"/api/jobs/estimate?base_model={public.id}").status_code == 200


# --- the emitter ------------------------------------------------------------------------------------------


async def _receive_from_group(group: str, emit) -> dict:
    layer = get_channel_layer(events.live_layer_alias())
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        from asgiref.sync import sync_to_async

        await sync_to_async(emit, thread_sensitive=False)()
        return await layer.receive(channel)
    finally:
        await layer.group_discard(group, channel)


def test_emit_metrics_reaches_the_job_group(job):
    points = [{"seq": 1, "step": 1, "split": "train", "values": {"loss": float("nan"), "lr": 1e-4}}]
    message = async_to_sync(_receive_from_group)(events.job_group(job.id),
                                                 lambda: events.emit_metrics(job.id, points))
    assert message["type"] == "job.push"
    assert json.loads(message["text"]) == {"type": "points", "points": [
        {"seq": 1, "step": 1, "split": "train", "values": {"loss": None, "lr": 1e-4}}]}  # NaN is not JSON


def test_emit_state_reaches_the_owners_list(job):
    message = async_to_sync(_receive_from_group)(events.user_jobs_group(job.owner_id),
                                                 lambda: events.emit_state(job))
    body = json.loads(message["text"])
    assert body["type"] == "state" and body["job"]["id"] == str(job.id) and body["job"]["state"] == "running"


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                               "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}})
def test_emitters_never_raise_when_redis_is_down(job):
    started = time.monotonic()
    assert events.emit_metrics(job.id, [{"seq": 1, "step": 1, "split": "train", "values": {}}]) is False
    assert events.emit_state(job) is False
    assert events.close_user_sockets(job.owner_id) is False
    assert events.emit_metrics(job.id, [{"no": "seq"}]) is False  # malformed input: logged, not raised
    assert time.monotonic() - started < 10
