from django.contrib import admin

from .models import Adapter, GGUFExport, Merge


@admin.register(Adapter)
class AdapterAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "base_model", "rank", "alpha", "size_bytes", "source", "created_at")
    list_filter = ("source",)


@admin.register(Merge)
class MergeAdmin(admin.ModelAdmin):
    list_display = ("adapter", "owner", "state", "dtype", "max_abs_diff", "created_at")


@admin.register(GGUFExport)
class GGUFExportAdmin(admin.ModelAdmin):
    list_display = ("merge", "owner", "state", "dtype", "attempt", "size_bytes", "created_at")
    list_filter = ("state",)
