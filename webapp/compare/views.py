"""Compare and sweep pages. Thin: parse, authorize (another user's job or sweep is a 404), call an action."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from webapp.jobs.forms import initial_from_job
from webapp.jobs.models import Job, Sweep
from webapp.lib.owned import get_owned_or_404

from .actions import SweepRejected, create_sweep
from .forms import SweepForm
from .selection import SelectionError, jobs_for
from .summary import MAX_COMPARE_JOBS, compare_rows, config_table, rows_csv
from .sweeps import parse_tolerance, sweep_summary


def _csv_response(text: str, filename: str) -> HttpResponse:
    response = HttpResponse(text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_GET
def compare_page(request: HttpRequest) -> HttpResponse:
    raw = request.GET.get("jobs", "")
    try:
        jobs = jobs_for(request.user, raw)
    except SelectionError as exc:
        return HttpResponseBadRequest(str(exc))
    if not jobs:
        recent = Job.objects.visible_to(request.user).select_related("dataset")[:50]
        sweeps = Sweep.objects.visible_to(request.user)[:20]
        return render(request, "compare/pick.html", {"recent": recent, "sweeps": sweeps,
                                                     "max_jobs": MAX_COMPARE_JOBS})
    rows = compare_rows(jobs)
    config_rows = config_table(jobs)
    series = [{"id": row["id"], "name": row["name"], "rank": row["rank"]} for row in rows]
    return render(request, "compare/compare.html", {
        "rows": rows, "config_rows": config_rows, "has_differences": any(r["differs"] for r in config_rows),
        "jobs": jobs, "job_ids": ",".join(r["id"] for r in rows),
        "series_json": json.dumps(series),
    })


@require_GET
def compare_csv(request: HttpRequest) -> HttpResponse:
    """The compare table as a CSV download (same rows as the page)."""
    try:
        jobs = jobs_for(request.user, request.GET.get("jobs", ""))
    except SelectionError as exc:
        return HttpResponseBadRequest(str(exc))
    if not jobs:
        return HttpResponseBadRequest("jobs is required: ?jobs=<id>,<id>")
    return _csv_response(rows_csv(compare_rows(jobs)), "compare.csv")


@require_GET
def sweep_list(request: HttpRequest) -> HttpResponse:
    sweeps = Sweep.objects.visible_to(request.user).prefetch_related("jobs")[:200]
    return render(request, "compare/sweep_list.html", {"sweeps": sweeps})


@require_http_methods(["GET", "POST"])
def sweep_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = SweepForm(request.user, request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                sweep = create_sweep(request.user, data["dataset"], data["base_model"], form.settings(),
                                     data["ranks"], data["alpha_rule"], data["fixed_alpha"], data["tolerance"],
                                     name=data["name"], validation_dataset=data["validation_dataset"])
            except SweepRejected as exc:
                form.show_problems(exc.param, exc.problems, str(exc))
            else:
                messages.success(request, f"Sweep queued: {len(sweep.ranks)} jobs, ranks "
                                          f"{', '.join(map(str, sweep.ranks))}.")
                return redirect("sweeps:detail", sweep_id=sweep.id)
        return render(request, "compare/sweep_new.html", {"form": form}, status=400)
    initial = {}
    if request.GET.get("from"):
        initial = initial_from_job(get_owned_or_404(Job.objects, request.user, pk=request.GET["from"]))
    return render(request, "compare/sweep_new.html", {"form": SweepForm(request.user, initial=initial)})


@require_GET
def sweep_detail(request: HttpRequest, sweep_id) -> HttpResponse:
    sweep = get_owned_or_404(Sweep.objects, request.user, pk=sweep_id)
    try:
        tolerance = parse_tolerance(request.GET.get("tolerance"))
    except ValueError as exc:
        messages.error(request, str(exc))
        tolerance = None
    summary = sweep_summary(sweep, tolerance)
    return render(request, "compare/sweep_detail.html", {
        "sweep": sweep, "summary": summary, "summary_json": json.dumps(summary),
        "job_ids": ",".join(row["id"] for row in summary["jobs"]),
    })
