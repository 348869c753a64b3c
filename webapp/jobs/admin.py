from django.contrib import admin

from .models import Checkpoint, Job, JobEvent, MetricPoint, Sweep


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "suffix", "state", "rank", "alpha", "base_model", "attempt", "created_at")
    list_filter = ("state", "quantization")
    readonly_fields = ("error", "lease_owner", "lease_expires_at", "attempt", "last_seq")


admin.site.register(Sweep)
admin.site.register(MetricPoint)
admin.site.register(Checkpoint)
admin.site.register(JobEvent)
