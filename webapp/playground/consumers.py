"""``ws/playground/<session id>/``: a session's answers as they are generated, for its owner (or staff).

Thin: authenticate, authorize before joining any group, send the session as stored, then forward what
:mod:`webapp.playground.events` pushes. Logging out closes the socket (the user's sockets group).
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from webapp.jobs.events import live_layer_alias, user_sockets_group

from .events import session_group
from .models import PlaygroundSession
from .serializers import session_json

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


def _visible_session(user, session_id) -> dict[str, Any] | None:
    session = PlaygroundSession.objects.visible_to(user).select_related("base_model").filter(pk=session_id).first()
    return session_json(session) if session is not None else None


class PlaygroundConsumer(AsyncWebsocketConsumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.channel_layer_alias = live_layer_alias()  # the layer the emitter publishes on
        self.groups_joined: list[str] = []

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        session_id = self.scope["url_route"]["kwargs"]["session_id"]
        snapshot = await database_sync_to_async(_visible_session)(user, session_id)
        if snapshot is None:  # someone else's session answers exactly like a missing one
            await self.close(code=CLOSE_FORBIDDEN)
            return
        for group in (session_group(session_id), user_sockets_group(user.pk)):
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.accept()
        # joined before reading again, so nothing pushed between the two reads is missed
        snapshot = await database_sync_to_async(_visible_session)(user, session_id) or snapshot
        await self.send(text_data=json.dumps({"type": "session", "session": snapshot}))

    async def disconnect(self, code: int) -> None:
        for group in self.groups_joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # noqa: BLE001 - the group expiry cleans up after a Redis outage
                pass
        self.groups_joined = []

    async def dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "job.push":  # forwarded as is, without a hop through the sync thread
            await self.send(text_data=message["text"])
        else:
            await super().dispatch(message)

    async def sockets_close(self, message: dict[str, Any]) -> None:
        """Logout (one browser session) or deactivation (every socket of the user)."""
        session = self.scope.get("session")
        wanted = message.get("session_key")
        if wanted is None or wanted == getattr(session, "session_key", None):
            await self.close(code=CLOSE_UNAUTHORIZED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data and '"ping"' in text_data:
            await self.send(text_data='{"type":"pong"}')
