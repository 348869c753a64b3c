from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.jobs.models import Job


@login_required
def home(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.visible_to(request.user)
    counts = {
        "datasets": Dataset.objects.visible_to(request.user).count(),
        "models": BaseModel.objects.visible_to(request.user).count(),
        "jobs": jobs.count(),
        "running": jobs.filter(state=Job.State.RUNNING).count(),
        "adapters": Adapter.objects.visible_to(request.user).count(),
    }
    recent_jobs = jobs.select_related("base_model", "dataset")[:10]
    return render(request, "dashboard/home.html", {"counts": counts, "recent_jobs": recent_jobs})


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and docker healthchecks: the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
