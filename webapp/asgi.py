"""ASGI entry point: HTTP through Django, websockets through Channels (session or API-key auth, origin-checked)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application does, for our handler

from webapp.lib.asgi_handler import OneHopASGIHandler  # noqa: E402

# Django's handler with each request's sync work in one thread hop (webapp/lib/asgi_handler.py), and request
# bodies spooled under FILE_UPLOAD_TEMP_DIR instead of /tmp (webapp/lib/asgi_body.py).
django_asgi_app = OneHopASGIHandler()

from django.urls import get_resolver  # noqa: E402

# Import every view (and with them torch) now, at start-up, not inside the first request, where it would
# hold Channels' shared sync thread for seconds and stall every open websocket.
get_resolver().url_patterns  # noqa: B018

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from webapp.accounts.ws_auth import WebsocketGuard  # noqa: E402
from webapp.lib.db_pool import use_idle_check  # noqa: E402
from webapp.lib.request_gate import RequestGate  # noqa: E402

use_idle_check()  # a query per pool checkout only for connections that sat idle (webapp/lib/db_pool.py)
from webapp.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": RequestGate(django_asgi_app, settings.WEB_REQUEST_SLOTS),
        "websocket": WebsocketGuard(URLRouter(websocket_urlpatterns)),
    }
)
