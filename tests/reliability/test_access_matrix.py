"""Every route of the project × {owner, another user, staff, anonymous}.

Every URL pattern (walked from the root resolver) and every websocket route must be classified below; a new
route that is not fails :func:`test_every_route_is_classified`, so whoever adds one decides who may see it.

- Object routes (the URL names one of the owner's objects): the owner and staff get an answer (not 401/403/404,
  not 5xx); another user gets 404 exactly like a missing id (no existence leak); anonymous gets the login
  redirect (pages) or 401 (API).
- Collection routes (lists, forms): another user gets an answer that mentions none of the owner's objects.
- A route whose GET answers 405 is exercised with POST instead, inside a transaction rolled back afterwards.
- Public routes answer anonymous callers.
- Admin routes are Django's own: only staff get past the admin login.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from webapp.routing import websocket_urlpatterns

from .results import record, set_meta

PAGE, API = "page", "api"


@dataclass(frozen=True)
class Route:
    kind: str  # PAGE or API
    obj: str | None = None  # the owner's object the URL names (None: a collection or a form)
    session_scoped: bool = False  # the object lives in one browser session: staff get 404 too
    ends_session: bool = False  # asked with a throwaway login, so the shared clients stay logged in
    query: str = ""  # a query string naming the owner's objects, e.g. "base_model={base_model}"


PUBLIC_ROUTES = {"accounts/login/", "healthz", "api/openapi.json", "api/docs"}
# Not URL patterns but served by middleware: checked for anonymous access too.
PUBLIC_PATHS = ["/static/css/studio.css", "/static/img/favicon.svg"]

ROUTES: dict[str, Route] = {
    "": Route(PAGE),
    "accounts/logout/": Route(PAGE, ends_session=True),
    "accounts/keys/": Route(PAGE),
    "accounts/keys/<int:key_id>/revoke/": Route(PAGE, "api_key", session_scoped=True),
    "accounts/password/": Route(PAGE),
    "accounts/password/done/": Route(PAGE),
    "datasets/": Route(PAGE),
    "datasets/upload/": Route(PAGE),
    "datasets/uploads/": Route(PAGE),
    "datasets/uploads/<str:upload_id>/chunk": Route(PAGE, "upload", session_scoped=True),
    "datasets/uploads/<str:upload_id>/finish": Route(PAGE, "upload", session_scoped=True),
    "datasets/<uuid:dataset_id>/": Route(PAGE, "dataset"),
    "datasets/<uuid:dataset_id>/delete": Route(PAGE, "dataset"),
    "models/": Route(PAGE),
    "models/<uuid:model_id>/": Route(PAGE, "base_model"),
    "models/<uuid:model_id>/delete": Route(PAGE, "base_model"),
    "jobs/": Route(PAGE),
    "jobs/new/": Route(PAGE),
    "jobs/<uuid:job_id>/": Route(PAGE, "job"),
    "jobs/<uuid:job_id>/cancel": Route(PAGE, "job"),
    "jobs/<uuid:job_id>/delete": Route(PAGE, "job"),
    "jobs/<uuid:job_id>/outcome": Route(PAGE, "job"),
    "jobs/<uuid:job_id>/retry-oom": Route(PAGE, "job"),
    "jobs/<uuid:job_id>/checkpoints/<int:step>/adapter": Route(PAGE, "job"),
    "adapters/": Route(PAGE),
    "adapters/upload/": Route(PAGE),
    "adapters/<uuid:adapter_id>/": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/download": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/delete": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/analysis": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/reduce": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/gguf": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/merge": Route(PAGE, "adapter"),
    "adapters/<uuid:adapter_id>/merges/<uuid:merge_id>/download": Route(PAGE, "merge"),
    "adapters/<uuid:adapter_id>/merges/<uuid:merge_id>/gguf": Route(PAGE, "merge"),
    "adapters/<uuid:adapter_id>/merges/<uuid:merge_id>/gguf/download": Route(PAGE, "merge"),
    "compare/": Route(PAGE),
    "compare/compare.csv": Route(PAGE),
    "sweeps/": Route(PAGE),
    "sweeps/new/": Route(PAGE),
    "sweeps/<uuid:sweep_id>/": Route(PAGE, "sweep"),
    "playground/": Route(PAGE),
    "playground/<uuid:session_id>/": Route(PAGE, "playground"),
    "v1/files": Route(API),
    "v1/files/<str:file_id>": Route(API, "dataset"),
    "v1/files/<str:file_id>/content": Route(API, "dataset"),
    "v1/fine_tuning/jobs": Route(API),
    "v1/fine_tuning/jobs/<str:job_id>": Route(API, "job"),
    "v1/fine_tuning/jobs/<str:job_id>/cancel": Route(API, "job"),
    "v1/fine_tuning/jobs/<str:job_id>/events": Route(API, "job"),
    "v1/fine_tuning/jobs/<str:job_id>/checkpoints": Route(API, "job"),
    "v1/models": Route(API),
    "v1/models/<path:model_id>": Route(API, "base_model"),
    "api/datasets/<str:dataset_id>/preview": Route(API, "dataset"),
    "api/datasets/<str:dataset_id>/stats": Route(API, "dataset"),
    "api/jobs/estimate": Route(API, query="base_model={base_model}"),
    "api/jobs/<uuid:job_id>": Route(API, "job"),
    "api/jobs/<uuid:job_id>/metrics": Route(API, "job"),
    "api/jobs/<uuid:job_id>/metrics.csv": Route(API, "job"),
    "api/jobs/<uuid:job_id>/metrics.jsonl": Route(API, "job"),
    "api/jobs/<uuid:job_id>/log": Route(API, "job"),
    "api/jobs/<uuid:job_id>/checkpoints/<int:step>/adapter": Route(API, "job"),
    "api/adapters/": Route(API),
    "api/adapters/<uuid:adapter_id>": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/download": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/analysis": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/reduce": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/gguf": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/merge": Route(API, "adapter"),
    "api/adapters/<uuid:adapter_id>/merges": Route(API, "adapter"),
    "api/merges/<uuid:merge_id>": Route(API, "merge"),
    "api/merges/<uuid:merge_id>/download": Route(API, "merge"),
    "api/merges/<uuid:merge_id>/gguf": Route(API, "merge"),
    "api/merges/<uuid:merge_id>/gguf/download": Route(API, "merge"),
    "api/playground/": Route(API),
    "api/playground/<str:session_id>": Route(API, "playground"),
    "api/compare": Route(API),
    "api/compare.csv": Route(API),
    "api/sweeps": Route(API),
    "api/sweeps/<str:sweep_id>": Route(API, "sweep"),
}

# Websocket routes: "object" sockets watch one of the owner's objects; "per-user" sockets carry only the
# connecting user's own objects (so another user may connect and sees nothing of the owner's).
WS_ROUTES = {
    "ws/jobs/": ("per-user", None),
    "ws/jobs/<uuid:job_id>/": ("object", "job"),
    "ws/playground/<uuid:session_id>/": ("object", "playground"),
}

# Which of the world's objects each URL parameter names.
PARAM_OBJECTS = {"dataset_id": "dataset", "file_id": "dataset", "model_id": "base_model", "job_id": "job",
                 "adapter_id": "adapter", "merge_id": "merge", "sweep_id": "sweep", "session_id": "playground",
                 "upload_id": "upload", "key_id": "api_key", "step": "step"}


def walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def all_routes() -> list[str]:
    return [route for route, _ in walk(get_resolver().url_patterns)]


def test_every_route_is_classified():
    unclassified = [r for r in all_routes()
                    if r not in ROUTES and r not in PUBLIC_ROUTES and not r.startswith("admin/")]
    assert not unclassified, f"new routes: add them to ROUTES or PUBLIC_ROUTES in {__file__}: {unclassified}"
    stale = sorted(set(ROUTES) - set(all_routes()))
    assert not stale, f"routes that no longer exist: remove them from ROUTES: {stale}"
    ws = [str(p.pattern) for p in websocket_urlpatterns]
    assert sorted(ws) == sorted(WS_ROUTES), f"classify websocket routes in WS_ROUTES: {ws}"


# ------------------------------------------------------------------------------------------------ the world


def build_url(route: str, pattern: URLPattern, ids: dict[str, str], base_model_name: str) -> str:
    kwargs = {}
    for name in pattern.pattern.converters:
        if name == "model_id" and route.startswith("v1/"):
            kwargs[name] = base_model_name  # /v1/models/<id> takes the model's name
        else:
            kwargs[name] = ids[PARAM_OBJECTS[name]]
    path = route
    for name, value in kwargs.items():
        converter = pattern.pattern.converters[name]
        kind = {"UUIDConverter": "uuid", "StringConverter": "str", "PathConverter": "path",
                "IntConverter": "int"}[type(converter).__name__]
        path = path.replace(f"<{kind}:{name}>", value)
    return "/" + path


def request(client: Client, method: str, url: str):
    """One request; a POST's changes are rolled back, so every cell sees the same world."""
    with transaction.atomic():
        response = client.get(url) if method == "GET" else client.post(url)
        transaction.set_rollback(True)
    return response


def _logged_in(user_id) -> Client:
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.get(pk=user_id))
    return client


def is_login_redirect(response, kind: str) -> bool:
    if kind == API:
        return response.status_code == 401
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def body_text(response) -> str:
    if getattr(response, "streaming", False):
        return ""  # a streamed file, not a listing
    return response.content.decode("utf-8", errors="replace")


def test_the_matrix(world, objects, owner_client, stranger_client, staff_client, owner_key, stranger_key,
                    staff_key):
    bearer = {who: Client(HTTP_AUTHORIZATION=f"Bearer {key}")
              for who, key in (("owner", owner_key), ("stranger", stranger_key), ("staff", staff_key))}
    pages = {"owner": owner_client, "stranger": stranger_client, "staff": staff_client}
    owner_marks = [value for key, value in objects.items() if key not in ("upload", "api_key", "step")]  # not UUIDs
    owner_marks += [uuid.UUID(v).hex for v in owner_marks] + [world.base_model.name]
    failures, cells = [], 0
    for route, pattern in walk(get_resolver().url_patterns):
        if route in PUBLIC_ROUTES or route.startswith("admin/"):
            continue
        spec = ROUTES[route]
        url = build_url(route, pattern, objects, world.base_model.name)
        if spec.query:
            url += "?" + spec.query.format(**objects)
        clients = bearer if spec.kind == API else pages
        if spec.ends_session:
            clients = {who: _logged_in(client.session.get("_auth_user_id")) for who, client in pages.items()}
        method = "GET"
        answers = {who: request(client, method, url) for who, client in clients.items()}
        if answers["owner"].status_code == 405:
            method = "POST"
            answers = {who: request(client, method, url) for who, client in clients.items()}
        answers["anonymous"] = request(Client(), method, url)
        for who, response in answers.items():
            cells += 1
            verdict = judge(spec, who, response, owner_marks)
            record("access_matrix", route=route, method=method, who=who, status=response.status_code,
                   ok=verdict is None)
            if verdict:
                failures.append(f"{method} {url} as {who}: {response.status_code} — {verdict}")
    set_meta("access_matrix", routes=len(ROUTES), cells=cells)
    assert not failures, "\n".join(failures)


def judge(spec: Route, who: str, response, owner_marks: list[str]) -> str | None:
    """None when the answer is right for ``who``, else what is wrong."""
    status = response.status_code
    if status >= 500:
        return "server error"
    if who == "anonymous":
        return None if is_login_redirect(response, spec.kind) else "anonymous must get the login page / 401"
    denied = status in (401, 403, 404) or (is_login_redirect(response, PAGE) and not spec.ends_session)
    if who == "owner" or (who == "staff" and not spec.session_scoped):
        return "denied to someone who may see it" if denied else None
    if spec.obj is not None:  # another user (or staff for a session-scoped object)
        return None if status == 404 else "must be 404 (exactly like a missing id)"
    leaked = [mark for mark in owner_marks if mark in body_text(response)]
    return f"mentions the owner's objects {leaked}" if leaked else None


def test_public_routes_answer_anonymous_callers(db):
    anonymous = Client()
    for route in sorted(PUBLIC_ROUTES):
        response = anonymous.get("/" + route)
        record("access_matrix", route=route, method="GET", who="anonymous", status=response.status_code, ok=True)
        assert response.status_code == 200, route
    for path in PUBLIC_PATHS:
        assert anonymous.get(path).status_code == 200, path


def test_admin_lets_only_staff_in(owner_client, staff_client):
    for who, client in (("anonymous", Client()), ("owner", owner_client)):
        response = client.get("/admin/")
        record("access_matrix", route="admin/", method="GET", who=who, status=response.status_code, ok=True)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert staff_client.get("/admin/").status_code == 200


# --------------------------------------------------------------------------------------------- websockets


def _socket(path: str, cookie: str | None) -> WebsocketCommunicator:
    from webapp.asgi import application

    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


def _cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_websocket_matrix(transactional_db, world, objects, owner, stranger, staff):
    cookies = {"owner": _cookie(owner), "stranger": _cookie(stranger), "staff": _cookie(staff), "anonymous": None}
    expected_by_kind = {"object": {"owner": True, "staff": True, "stranger": False, "anonymous": False},
                        "per-user": {"owner": True, "staff": True, "stranger": True, "anonymous": False}}
    failures = []

    async def scenario():
        for pattern in websocket_urlpatterns:
            route = str(pattern.pattern)
            kind, obj = WS_ROUTES[route]
            path = "/" + (route.replace(route[route.index("<"):route.index(">") + 1], objects[obj]) if obj else route)
            for who, cookie in cookies.items():
                comm = _socket(path, cookie)
                connected, _ = await comm.connect(timeout=5)
                await comm.disconnect()
                expected = expected_by_kind[kind][who]
                record("websocket_matrix", route=route, who=who, connected=connected, ok=connected == expected)
                if connected != expected:
                    failures.append(f"{path} as {who}: connected={connected}, expected {expected}")

    async_to_sync(scenario)()
    assert not failures, "\n".join(failures)
