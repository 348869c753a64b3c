"""Compare page, its CSV and GET /api/compare: the table's numbers come from the jobs' records."""

from __future__ import annotations

import csv
import io
import math
import re

import pytest
from django.test import Client

from .compare_factories import finished_job
from .jobs_factories import make_job


@pytest.fixture
def pair(owner):
    small = finished_job(owner, rank=4, alpha=8.0, losses=[3.0, 2.5, 2.2, 2.0], eval_losses={2: 2.4, 4: 2.1},
                         suffix="r4")
    big = finished_job(owner, rank=16, alpha=32.0, losses=[3.0, 2.4, 2.0, 1.7], eval_losses={2: 2.2, 4: 2.3},
                       suffix="r16", use_rslora=True, quantization="nf4", targets="q_proj,k_proj,v_proj")
    return small, big


def cells(page: str, job) -> dict[str, str]:
    row = re.search(rf'<tr data-job-id="{job.id}">(.*?)</tr>', page, re.S).group(1)
    return {key: re.sub(r"<[^>]+>", "", value).replace("\xa0", " ").strip()
            for key, value in re.findall(r'data-col="(\w+)"[^>]*>(.*?)</td>', row, re.S)}


def test_it_works(owner_client, pair):
    small, big = pair
    response = owner_client.get(f"/compare/?jobs={small.id},{big.id}")
    assert response.status_code == 200
    page = response.content.decode()
    assert "Compare 2 jobs" in page and "uPlot.iife.min.js" in page and "compare.js" in page

    mine = cells(page, small)
    assert mine["rank"] == "4" and mine["alpha"] == "8"
    assert mine["scaling"] == "2.000 α/r"
    assert mine["targets"] == "q_proj,v_proj" and mine["quantization"] == "none"
    assert mine["trainable_params"] == "4,000" and mine["trainable_percent"] == "0.400"  # 4,000 of 1,000,000
    assert mine["adapter_size"] == "15.6 KB"              # 16,000 bytes
    assert mine["estimated_memory"] == "47.7 MB"          # the estimate recorded at launch (50,000,000)
    assert mine["measured_memory"] == "3.8 MB"            # the last point's peak (4,000,000)
    assert mine["tokens_per_second"] == "50"              # 400 tokens in 8 s
    assert mine["wall_time"] == "1m 30s"
    assert mine["final_train_loss"] == "2.0000"
    assert mine["best_eval_loss"] == "2.1000" and mine["perplexity"] == f"{2.0 ** 2.1:.2f}"

    theirs = cells(page, big)
    assert theirs["scaling"] == "8.000 α/√r"  # rsLoRA: 32 / √16
    assert theirs["targets"] == "q_proj,k_proj,v_proj" and theirs["quantization"] == "nf4"
    assert theirs["final_train_loss"] == "1.7000"
    assert theirs["best_eval_loss"] == "2.2000"  # the lowest eval loss, not the last one


def test_differences_only_config_view(owner_client, pair):
    small, big = pair
    page = owner_client.get(f"/compare/?jobs={small.id},{big.id}").content.decode()
    differing = set(re.findall(r'<tr class="differs" data-key="([\w.]+)"', page))
    same = set(re.findall(r'<tr class="same" data-key="([\w.]+)"', page))
    assert {"lora.rank", "lora.alpha", "lora.use_rslora", "lora.targets", "quant.mode"} <= differing
    assert {"train.learning_rate", "train.seed", "data.max_seq_len"} <= same
    assert "output_dir" not in differing | same  # paths differ for every job and say nothing about the recipe
    assert 'class="table config-table diff-only"' in page  # differences only, unless unticked


def test_it_validates_ownership(owner_client, stranger_client, pair, stranger):
    small, big = pair
    theirs = make_job(stranger, suffix="secret-run")
    # A stranger's id among mine answers exactly like an unknown id, and shows nothing of mine.
    for query in (f"{small.id},{theirs.id}", f"{small.id},00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = owner_client.get(f"/compare/?jobs={query}")
        assert response.status_code == 404
        assert "secret-run" not in response.content.decode()
    assert stranger_client.get(f"/compare/?jobs={small.id},{big.id}").status_code == 404
    assert stranger_client.get(f"/compare/compare.csv?jobs={small.id}").status_code == 404
    assert Client().get(f"/compare/?jobs={small.id}").status_code == 302  # log in first


def test_staff_may_compare_anyones_jobs(pair, staff):
    small, big = pair
    client = Client()
    client.force_login(staff)
    assert client.get(f"/compare/?jobs={small.id},{big.id}").status_code == 200


def test_without_jobs_it_offers_a_choice(owner_client, pair):
    page = owner_client.get("/compare/").content.decode()
    assert "Pick jobs" in page and "r16" in page


def test_csv_export(owner_client, pair):
    small, big = pair
    response = owner_client.get(f"/compare/compare.csv?jobs={big.id},{small.id}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["name"] for r in rows] == ["r16", "r4"]  # the URL's order
    big_row, small_row = rows
    assert big_row["rank"] == "16" and big_row["alpha"] == "32.0" and big_row["scaling rule"] == "α/√r"
    assert float(big_row["scaling"]) == pytest.approx(8.0)
    assert big_row["trainable params"] == "16000" and float(big_row["trainable % of base"]) == pytest.approx(1.6)
    assert big_row["adapter size (bytes)"] == "64000"
    assert float(small_row["best eval loss"]) == pytest.approx(2.1) and small_row["best eval step"] == "4"
    assert float(small_row["perplexity"]) == pytest.approx(2.0 ** 2.1)
    assert float(small_row["wall time (s)"]) == pytest.approx(90, abs=1)


def test_api_compare(api, pair, stranger):
    small, big = pair
    response = api.get(f"/api/compare?jobs={small.id},{big.id}")
    assert response.status_code == 200
    body = response.json()
    assert [row["rank"] for row in body["jobs"]] == [4, 16]
    first = body["jobs"][0]
    assert first["final_train_loss"] == 2.0 and first["best_eval_loss"] == 2.1
    assert first["tokens_per_second"] == 50.0 and first["measured_peak_memory_bytes"] == 4_000_000
    assert math.isclose(first["trainable_percent"], 0.4)
    keys = {row["key"] for row in body["config_differences"]}
    assert "lora.rank" in keys and "train.seed" not in keys

    csv_response = api.get(f"/api/compare.csv?jobs={small.id}")
    assert csv_response.status_code == 200 and csv_response.content.decode().startswith("job id,name,")

    theirs = make_job(stranger)
    missing = api.get(f"/api/compare?jobs={small.id},{theirs.id}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get("/api/compare").status_code == 400
    assert Client().get(f"/api/compare?jobs={small.id}").status_code == 401
