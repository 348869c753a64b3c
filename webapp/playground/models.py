"""Playground sessions: one prompt answered by a base model and up to four of its adapters, side by side.

A follow-up is a new session that continues another (``parent``): it copies the parent's conversation into
``history``, so each answer column keeps its own conversation (the user's turns and that column's answers).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webapp.lib.owned import OwnedQuerySet

MAX_ADAPTERS = 4


class PlaygroundSession(models.Model):
    """One prompt and its answers (the latest turn of a conversation when it has ``history``).

    ``outputs`` holds one entry per answer in display order, the base model's first::

        {"key": "base" | <adapter id>, "label": str, "state": "pending" | "running" | "done" | "failed",
         "text": str, "tokens": int, "finish_reason": "stop" | "length" | None, "seconds": float | None}

    ``history`` holds the earlier turns, oldest first: ``{"prompt": str, "answers": {key: text}}``.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    TERMINAL = (State.SUCCEEDED, State.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_sessions")
    base_model = models.ForeignKey("basemodels.BaseModel", on_delete=models.CASCADE, related_name="playground_sessions")
    adapter_ids = models.JSONField(default=list, help_text="Adapter ids (strings) in display order, at most four.")
    prompt = models.TextField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="follow_ups",
                               help_text="The session this one continues (same owner, base model and adapters).")
    history = models.JSONField(default=list, blank=True, help_text="Earlier turns, copied from the parent.")
    settings = models.JSONField(default=dict, help_text="max_new_tokens, temperature, top_p, seed.")
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    outputs = models.JSONField(default=list)
    prompt_tokens = models.IntegerField(null=True, blank=True, help_text="The longest answer column's prompt.")
    error = models.TextField(blank=True, help_text="Technical details, for admins.")
    error_message = models.TextField(blank=True, help_text="What went wrong, for people.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, help_text="The worker's last write: a stalled session is reaped.")
    unclaimed_deliveries = models.IntegerField(
        default=0, help_text="Deliveries that have not (yet) started the session: a delivery is counted before it can "
                             "fail, and starting resets the count (webapp.lib.delivery_cap).")

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"playground {self.id}"

    def messages_for(self, key: str) -> list[dict[str, str]]:
        """The conversation the answer column ``key`` ("base" or an adapter id) answers: every user turn with
        that column's own earlier answers, the current prompt last."""
        messages = []
        for turn in self.history:
            messages += [{"role": "user", "content": turn["prompt"]},
                         {"role": "assistant", "content": turn["answers"].get(key, "")}]
        return messages + [{"role": "user", "content": self.prompt}]
