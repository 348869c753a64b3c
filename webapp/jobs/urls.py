from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_new, name="new"),
    path("<uuid:job_id>/", views.job_detail, name="detail"),
    path("<uuid:job_id>/outcome", views.job_outcome, name="outcome"),
    path("<uuid:job_id>/cancel", views.job_cancel, name="cancel"),
    path("<uuid:job_id>/delete", views.job_delete, name="delete"),
    path("<uuid:job_id>/retry-oom", views.job_retry_oom, name="retry-oom"),
    path("<uuid:job_id>/checkpoints/<int:step>/adapter", views.job_checkpoint_adapter, name="checkpoint-adapter"),
]
