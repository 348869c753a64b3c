from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("webapp.accounts.urls")),
    path("datasets/", include("webapp.datasets.urls")),
    path("models/", include("webapp.basemodels.urls")),
    path("jobs/", include("webapp.jobs.urls")),
    path("adapters/", include("webapp.adapters.urls")),
    path("compare/", include("webapp.compare.urls")),
    path("sweeps/", include("webapp.compare.sweep_urls")),
    path("playground/", include("webapp.playground.urls")),
    path("", include("webapp.api.urls")),
    path("", include("webapp.dashboard.urls")),
]

handler404 = "webapp.lib.server_errors.page_not_found"  # JSON under /v1 and /api, the site's layout elsewhere
handler500 = "webapp.lib.server_errors.server_error"  # a full disk before any view ran answers 507, not 500
