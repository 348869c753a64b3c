from django.contrib import admin

from .models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "source", "architecture", "parameter_count", "public", "trust_remote_code")
    list_filter = ("source", "public", "trust_remote_code")
    search_fields = ("name", "hub_id", "local_path")
