"""A real browser (Debian's Chromium) on a live uvicorn server compares two finished jobs."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server
from webapp.jobs.models import Job, Sweep

from .compare_factories import finished_job


def legend_labels(page, chart_id: str) -> list[str]:
    return page.locator(f"#{chart_id} .u-legend .u-series .u-label").all_inner_texts()


@pytest.mark.browser
@pytest.mark.stack
def test_compare_two_finished_jobs_and_see_both_curves(transactional_db, owner, page, tmp_path):
    small = finished_job(owner, rank=4, alpha=8.0, losses=[3.0, 2.6, 2.3, 2.1, 2.0], eval_losses={3: 2.4, 5: 2.2},
                         suffix="small")
    big = finished_job(owner, rank=64, alpha=128.0, losses=[3.0, 2.4, 2.0, 1.8, 1.7], eval_losses={3: 2.1, 5: 2.0},
                       suffix="big")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/compare/?jobs={small.id},{big.id}")
        page.wait_for_function("window.LoraStudioCompare && window.LoraStudioCompare.loaded")
        # Both jobs' curves: two series (after the x series) in each chart's legend, coloured apart by rank.
        assert legend_labels(page, "chart-train")[1:] == ["small (r=4)", "big (r=64)"]
        assert legend_labels(page, "chart-eval")[1:] == ["small (r=4)", "big (r=64)"]
        colours = page.evaluate("window.LoraStudioCompare.charts[0].series.slice(1).map(s => s._stroke || s.stroke())")
        assert len(set(colours)) == 2

        for axis in ("tokens", "epoch"):
            page.click(f"[data-testid=x-axis] button[data-x={axis}]")
            assert page.evaluate("window.LoraStudioCompare.charts[0].data[0].length") == 5  # 5 steps, 5 x values
            assert page.locator("#chart-train .u-legend .u-series .u-label").first.inner_text() == axis
        page.fill("[data-testid=smoothing]", "0")
        assert page.evaluate("window.LoraStudioCompare.charts[0].data[2][4]") == 1.7  # unsmoothed: the raw loss

        assert page.evaluate("window.LoraStudioCompare.pngDataUrl()").startswith("data:image/png;base64,")
        with page.expect_download() as download:
            page.get_by_test_id("compare-csv").click()
        assert download.value.suggested_filename == "compare.csv"

        rank_row = page.locator("[data-testid=config-table] tr[data-key='lora.rank']")
        seed_row = page.locator("[data-testid=config-table] tr[data-key='train.seed']")
        assert rank_row.is_visible() and not seed_row.is_visible()  # differences only
        page.get_by_test_id("diff-only").uncheck()
        assert seed_row.is_visible()
        assert errors == []

        # The sweep page draws loss against rank and against trainable parameters, with the recommendation.
        sweep = Sweep.objects.create(owner=owner, name="two ranks", ranks=[4, 64], tolerance=0.01)
        Job.objects.filter(pk__in=[small.pk, big.pk]).update(sweep=sweep)
        page.goto(f"{base_url}/sweeps/{sweep.id}/")
        assert page.get_by_test_id("recommended-rank").inner_text() == "rank 64"
        page.wait_for_function("window.LoraStudioSweep && window.LoraStudioSweep.charts.length === 2")
        assert page.evaluate("window.LoraStudioSweep.charts.map(c => c.data[0])") == [[4, 64], [4000, 64000]]
        assert errors == []
    finally:
        server.stop()
