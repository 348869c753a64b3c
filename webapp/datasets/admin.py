from django.contrib import admin

from .models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "format", "rows", "size_bytes", "created_at")
    list_filter = ("format",)
    search_fields = ("name", "sha256")
