"""A real browser (Debian's Chromium) on a live uvicorn server compares two finished jobs."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server
from webapp.jobs.models import Job, Sweep

from .compare_factories import finished_job


def legend_labels(page, chart_id: str) -> list[str]:
    return page.locator(f"#{chart_id} .u-legend .u-series .u-label").all_inner_texts()


def lab_distance(css_a: str, css_b: str) -> float:
    """CIE76 colour difference of two CSS rgb() colours (about 2.3 is just noticeable; 25+ is a different colour)."""
    def lab(css: str) -> tuple[float, float, float]:
        r, g, b = (c / 255 for c in map(int, re.findall(r"\d+", css)[:3]))
        r, g, b = ((c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4) for c in (r, g, b))
        x, y, z = ((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b,
                   (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883)
        fx, fy, fz = ((t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116) for t in (x, y, z))
        return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)
    return math.dist(lab(css_a), lab(css_b))


def contrast_on_white(css: str) -> float:
    r, g, b = ((c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
               for c in (int(v) / 255 for v in re.findall(r"\d+", css)[:3]))
    return 1.05 / (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.05)


@pytest.mark.browser
@pytest.mark.stack
def test_compare_two_finished_jobs_and_see_both_curves(transactional_db, owner, page, tmp_path):
    small = finished_job(owner, rank=4, alpha=8.0, losses=[3.0, 2.6, 2.3, 2.1, 2.0], eval_losses={3: 2.4, 5: 2.2},
                         suffix="small")
    big = finished_job(owner, rank=64, alpha=128.0, losses=[3.0, 2.4, 2.0, 1.8, 1.7], eval_losses={3: 2.1, 5: 2.0},
                       suffix="big")
    r16 = finished_job(owner, rank=16, alpha=32.0, losses=[3.0, 2.5, 2.2, 2.0, 1.9], suffix="r16")
    r32 = finished_job(owner, rank=32, alpha=64.0, losses=[3.0, 2.5, 2.1, 1.9, 1.8], suffix="r32")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/compare/?jobs={small.id},{big.id},{r16.id},{r32.id}")
        page.wait_for_function("window.LoraStudioCompare && window.LoraStudioCompare.loaded")
        # Every job's curve: one series each (after the x series) in each chart's legend, coloured apart by rank.
        labels = ["small (r=4)", "big (r=64)", "r16 (r=16)", "r32 (r=32)"]
        assert legend_labels(page, "chart-train")[1:] == labels
        assert legend_labels(page, "chart-eval")[1:] == labels
        colours = page.evaluate("window.LoraStudioCompare.charts[0].series.slice(1).map(s => s._stroke || s.stroke())")
        assert len(set(colours)) == 4
        # r=16 and r=32 (neighbours on the usual ladder) read as different colours on the chart, as do all
        # neighbouring ranks of the ladder, each visible on white; the table's swatches match the curves.
        assert lab_distance(colours[2], colours[3]) > 40
        ladder = page.evaluate("[1, 2, 4, 8, 16, 32, 64, 128, 256].map(r => Studio.rankColour(r))")
        assert colours == [ladder[2], ladder[6], ladder[4], ladder[5]]
        assert min(lab_distance(a, b) for a, b in pairwise(ladder)) > 40
        assert min(contrast_on_white(c) for c in ladder) >= 3
        swatches = page.evaluate("[...document.querySelectorAll('[data-testid=compare-table] .rank-swatch')]"
                                 ".map(e => getComputedStyle(e).backgroundColor)")
        assert sorted(swatches) == sorted(colours)

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
