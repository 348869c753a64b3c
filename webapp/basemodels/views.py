"""Base model pages: list + register, detail, delete. Thin: parse, authorize, call an action."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.lib.owned import get_owned_or_404

from .actions import ModelRejected, delete_model, model_roots, register_model
from .models import BaseModel

SOURCES = ("hub", "local")


def _list_context(request: HttpRequest, **extra) -> dict:
    models = BaseModel.objects.visible_to(request.user).select_related("owner")
    return {"models": models, "form": {"source": "hub"}, "error": None, "error_param": None,
            "model_roots": model_roots(), **extra}


@require_http_methods(["GET", "POST"])
def model_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "basemodels/list.html", _list_context(request))
    form = {key: request.POST.get(key, "").strip() for key in ("name", "source", "hub_id", "revision", "local_path")}
    try:
        if form["source"] not in SOURCES:
            raise ModelRejected("Choose where the model comes from: a hub id or a local directory.", param="source")
        if form["source"] == "hub":
            model = register_model(request.user, form["name"], hub_id=form["hub_id"], revision=form["revision"])
        else:
            model = register_model(request.user, form["name"], local_path=form["local_path"])
    except ModelRejected as exc:
        context = _list_context(request, form=form, error=str(exc), error_param=exc.param)
        return render(request, "basemodels/list.html", context, status=400)
    messages.success(request, f"Model {model.name} registered.")
    return redirect("basemodels:detail", model_id=model.id)


def model_detail(request: HttpRequest, model_id) -> HttpResponse:
    model = get_owned_or_404(BaseModel.objects.select_related("owner"), request.user, pk=model_id)
    can_delete = request.user.is_staff or model.owner_id == request.user.id
    return render(request, "basemodels/detail.html", {"model": model, "can_delete": can_delete})


@require_POST
def model_delete(request: HttpRequest, model_id) -> HttpResponse:
    model = get_owned_or_404(BaseModel.objects, request.user, pk=model_id)
    if not (request.user.is_staff or model.owner_id == request.user.id):
        raise Http404("Not found")  # public models are visible to all, deletable by their owner only
    try:
        delete_model(model)
    except ModelRejected as exc:
        messages.error(request, str(exc))
        return redirect("basemodels:detail", model_id=model.id)
    messages.success(request, f"Model {model.name} removed (its files were not touched).")
    return redirect("basemodels:list")
