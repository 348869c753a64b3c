from django.contrib import admin

from .models import PlaygroundSession


@admin.register(PlaygroundSession)
class PlaygroundSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "base_model", "state", "created_at")
    list_filter = ("state",)
    readonly_fields = ("outputs", "error", "parent", "history")
