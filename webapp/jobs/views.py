"""Job pages: list, new (and "launch again with changes"), detail with live charts and its outcome, cancel,
OOM retry, an adapter from a checkpoint.

Thin: the form parses, ``webapp.jobs.actions`` (create_job, cancel_job) change state.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lora_engine.checkpoint import best_eval_checkpoint
from webapp.adapters.checkpoints import adapter_from_checkpoint
from webapp.adapters.models import Adapter
from webapp.adapters.validation import AdapterRejected
from webapp.lib.owned import get_owned_or_404

from .actions import JobRejected, cancel_job, create_job, delete_job
from .estimates import memory_measure
from .forms import JobForm, initial_from_job, settings_from_job
from .models import Checkpoint, Job

LOG_TAIL = 50
STATE_FILTERS = [("", "All")] + [(value, label) for value, label in Job.State.choices]


def _jobs(request: HttpRequest):
    return Job.objects.visible_to(request.user).select_related("dataset", "base_model", "owner")


def failed_out_of_memory(job: Job) -> bool:
    """A failed job whose error was running out of (GPU or host) memory."""
    text = f"{job.error} {job.error_message}".lower()
    return job.state == Job.State.FAILED and ("out of memory" in text or "outofmemory" in text)


def oom_retry_settings(job: Job) -> dict[str, Any] | None:
    """The job's settings with half the micro-batch and twice the accumulation (same effective batch), or
    None when the micro-batch is already 1."""
    settings = settings_from_job(job)
    batch_size = int(settings.get("batch_size") or 1)
    if batch_size <= 1:
        return None
    settings["batch_size"] = batch_size // 2
    settings["grad_accum"] = int(settings.get("grad_accum") or 1) * 2
    return settings


def trained_adapter(job: Job, user) -> Adapter | None:
    """The adapter a succeeded job registered, if it still exists and ``user`` may see it."""
    if job.state != Job.State.SUCCEEDED:
        return None
    return Adapter.objects.visible_to(user).filter(job=job).first()


def job_checkpoints(job: Job) -> list[Checkpoint]:
    """The job's checkpoints, newest first, with ``best`` set on the one the engine keeps for its lowest eval loss
    (:func:`lora_engine.checkpoint.best_eval_checkpoint`, the same rule)."""
    rows = list(job.checkpoints.order_by("-step"))
    evals = [{"step": c.step, "eval_loss": c.metrics["valid_loss"]} for c in rows
             if isinstance((c.metrics or {}).get("valid_loss"), float)]
    best = best_eval_checkpoint(evals, {c.step for c in rows})
    for row in rows:
        row.best = row.step == best
    return rows


def _outcome_context(request: HttpRequest, job: Job) -> dict[str, Any]:
    """What jobs/_outcome.html shows: the error and OOM help of a failed job, the adapter of a succeeded one,
    the checkpoints an adapter can be made from."""
    oom = failed_out_of_memory(job)
    return {"job": job, "oom": oom, "oom_retry": oom_retry_settings(job) if oom else None,
            "adapter": trained_adapter(job, request.user), "checkpoints": job_checkpoints(job)}


def job_list(request: HttpRequest) -> HttpResponse:
    state = request.GET.get("state", "")
    jobs = _jobs(request)
    if state in Job.State.values:
        jobs = jobs.filter(state=state)
    else:
        state = ""
    return render(request, "jobs/list.html", {"jobs": jobs[:500], "state": state, "state_filters": STATE_FILTERS})


@require_http_methods(["GET", "POST"])
def job_new(request: HttpRequest) -> HttpResponse:
    source = None
    if request.method == "POST":
        form = JobForm(request.user, request.POST)
        if form.is_valid():
            try:
                job = create_job(request.user, form.cleaned_data["dataset"], form.cleaned_data["base_model"],
                                 form.settings(), suffix=form.cleaned_data["suffix"],
                                 validation_dataset=form.cleaned_data["validation_dataset"])
            except JobRejected as exc:
                form.show_problems(getattr(exc, "param", None), getattr(exc, "problems", []), str(exc))
            else:
                messages.success(request, "Job queued.")
                return redirect("jobs:detail", job_id=job.id)
        status = 400
    else:
        initial = {k: v for k, v in request.GET.items() if k in ("dataset", "base_model")}
        if request.GET.get("from"):
            source = get_owned_or_404(Job.objects, request.user, pk=request.GET["from"])
            initial = initial_from_job(source)
        form = JobForm(request.user, initial=initial)
        status = 200
    return render(request, "jobs/new.html", {"form": form, "source": source}, status=status)


def job_detail(request: HttpRequest, job_id) -> HttpResponse:
    job = get_owned_or_404(_jobs(request), request.user, pk=job_id)
    log_tail = list(job.events.order_by("-id")[:LOG_TAIL])[::-1]
    context = {
        **_outcome_context(request, job),
        "config": job.config or {},
        "log_tail": log_tail,
        "estimate_bytes": (job.memory_estimate or {}).get("selected_total"),
        "memory_measure": memory_measure(job),
    }
    return render(request, "jobs/detail.html", context)


@require_GET
def job_outcome(request: HttpRequest, job_id) -> HttpResponse:
    """The job page's outcome section alone: the page swaps it in when a live update says the job ended."""
    job = get_owned_or_404(_jobs(request), request.user, pk=job_id)
    return render(request, "jobs/_outcome.html", _outcome_context(request, job))


@require_POST
def job_cancel(request: HttpRequest, job_id) -> HttpResponse:
    job = get_owned_or_404(Job.objects, request.user, pk=job_id)
    if job.is_terminal:
        messages.error(request, f"This job has already {job.state}; there is nothing to cancel.")
    else:
        try:
            job = cancel_job(job)
        except JobRejected as exc:
            messages.error(request, str(exc))
            return redirect("jobs:detail", job_id=job.id)
        if job.state == Job.State.CANCELLED:
            messages.success(request, "Job cancelled.")
        else:
            messages.success(request, "Cancelling: the job stops after its current step and keeps its last "
                                      "checkpoint.")
    return redirect("jobs:detail", job_id=job.id)


@require_POST
def job_delete(request: HttpRequest, job_id) -> HttpResponse:
    job = get_owned_or_404(Job.objects, request.user, pk=job_id)
    try:
        delete_job(job)
    except JobRejected as exc:
        messages.error(request, str(exc))
        return redirect("jobs:detail", job_id=job.id)
    messages.success(request, f"Job {job.suffix or job.id} deleted, with its curves and checkpoints.")
    return redirect("jobs:list")


@require_POST
def job_retry_oom(request: HttpRequest, job_id) -> HttpResponse:
    """Launch a copy of an out-of-memory job with half the micro-batch and twice the accumulation."""
    job = get_owned_or_404(_jobs(request), request.user, pk=job_id)
    settings = oom_retry_settings(job) if failed_out_of_memory(job) else None
    if settings is None:
        messages.error(request, "Only a job that ran out of memory with a micro-batch above 1 can be retried this "
                                "way. Lower the sequence length or use 4-bit (nf4) quantization instead.")
        return redirect("jobs:detail", job_id=job.id)
    try:
        retry = create_job(request.user, job.dataset, job.base_model, settings, suffix=job.suffix,
                           validation_dataset=job.validation_dataset)
    except JobRejected as exc:
        messages.error(request, f"Could not retry: {exc}")
        return redirect("jobs:detail", job_id=job.id)
    messages.success(request, f"Retrying with micro-batch {settings['batch_size']} × accumulation "
                              f"{settings['grad_accum']} (the same effective batch).")
    return redirect("jobs:detail", job_id=retry.id)


@require_POST
def job_checkpoint_adapter(request: HttpRequest, job_id, step: int) -> HttpResponse:
    """Make an adapter of the checkpoint at ``step`` (``webapp.adapters.checkpoints``) and show it."""
    job = get_owned_or_404(Job.objects, request.user, pk=job_id)
    try:
        adapter = adapter_from_checkpoint(job, step)
    except AdapterRejected as exc:
        messages.error(request, str(exc))
        return redirect("jobs:detail", job_id=job.id)
    messages.success(request, f"Adapter {adapter.name}: the checkpoint at step {step}, kept as an adapter of its own.")
    return redirect("adapters:detail", adapter_id=adapter.id)
