"""Security properties a user relies on: CSRF on every form, hashed and revocable API keys, server-made file
names inside DATA_DIR, downloads confined to DATA_DIR, trust_remote_code off unless an admin turns it on,
and production settings that pass ``manage.py check --deploy``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404
from django.test import Client, RequestFactory
from django.urls import get_resolver
from django.utils import timezone

from webapp.accounts.keys import create_api_key, revoke_api_key
from webapp.accounts.models import ApiKey
from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.lib.downloads import ranged_file_response
from webapp.lib.storage import data_path

from .conftest import CHAT_ROWS, jsonl
from .results import ROOT, record
from .test_access_matrix import ROUTES, build_url, walk


def test_every_post_without_a_csrf_token_is_refused(world, objects, owner):
    """Each route, POSTed by a logged-in browser without the token: 403 before the view runs (or 405 from an API
    route that takes no POST at all, which it answers before anything else)."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    refused = []
    for route, pattern in walk(get_resolver().url_patterns):
        if route.startswith("admin/") and route != "admin/":
            continue
        url = build_url(route, pattern, objects, world.base_model.name) if route in ROUTES else "/" + route
        response = browser.post(url, {"name": "x"})
        record("csrf", route=route, status=response.status_code, ok=response.status_code in (403, 405))
        if response.status_code not in (403, 405):
            refused.append(f"POST {url}: {response.status_code}")
    assert not refused, "accepted without a CSRF token:\n" + "\n".join(refused)
    assert Dataset.objects.filter(pk=world.dataset.pk).exists(), "nothing was deleted"


def test_bearer_key_requests_need_no_csrf_token(world, owner_key):
    """A key is not an ambient credential (no cookie), so scripts post without a token."""
    script = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}", enforce_csrf_checks=True)
    response = script.post("/v1/fine_tuning/jobs", "{}", content_type="application/json")
    assert response.status_code == 400 and "model" in response.json()["error"]["message"]


def test_api_keys_are_stored_hashed_shown_once_and_revocable(owner):
    api_key, raw = create_api_key(owner, name="laptop")
    stored = ApiKey.objects.filter(pk=api_key.pk).values().get()
    assert stored["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert not any(raw in str(value) for value in stored.values()), "the raw key is never stored"
    assert len(stored["prefix"]) < len(raw) // 2
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/models").status_code == 200
    revoke_api_key(api_key)
    response = client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    record("security", check="api keys", held="SHA-256 stored, raw key never stored, revoked key -> 401")


def test_api_keys_of_deactivated_users_stop_working(owner, owner_key):
    owner.is_active = False
    owner.save()
    assert Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}").get("/v1/models").status_code == 401


def test_uploads_are_stored_under_server_made_names(api, settings):
    upload = SimpleUploadedFile("my data; rm -rf ~.jsonl", jsonl(CHAT_ROWS), content_type="application/jsonl")
    response = api.post("/v1/files", {"purpose": "fine-tune", "file": upload})
    assert response.status_code == 200, response.content
    dataset = Dataset.objects.get()
    assert re.fullmatch(r"datasets/[0-9a-f]{32}\.jsonl", dataset.storage_path)
    assert dataset.path.resolve().is_relative_to(Path(settings.DATA_DIR).resolve()) and dataset.path.is_file()
    assert not list(Path(settings.DATA_DIR).rglob("*rm -rf*"))
    record("security", check="server-made names", held=f"'my data; rm -rf ~.jsonl' stored as {dataset.storage_path}")


def test_uploaded_adapters_live_in_uuid_directories(world, settings):
    path = world.adapter.path
    assert re.fullmatch(r"adapters/[0-9a-f]{32}", world.adapter.storage_path)
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("relative", ["../secret", "../../etc/passwd", "/etc/passwd", "datasets/../../x"])
def test_data_path_refuses_to_leave_data_dir(relative):
    with pytest.raises(ValueError):
        data_path(relative)


def test_downloads_stream_only_files_inside_data_dir(settings, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    link = Path(settings.DATA_DIR) / "datasets" / "link.jsonl"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    request = RequestFactory().get("/")
    for path in (outside, link, Path(settings.DATA_DIR) / ".." / "outside.txt"):
        with pytest.raises(Http404):
            ranged_file_response(request, path, "x.txt")
    inside = Path(settings.DATA_DIR) / "datasets" / "fine.jsonl"
    inside.write_text("ok")
    assert ranged_file_response(request, inside, "fine.jsonl").status_code == 200


def test_a_forged_storage_path_is_never_served(owner, api, settings, tmp_path):
    """Even a row pointing outside DATA_DIR (a bad migration, a tampered DB) does not leak the file."""
    secret = tmp_path / "secret.jsonl"
    secret.write_text("top secret")
    dataset = Dataset.objects.create(owner=owner, name="x.jsonl", storage_path=os.path.relpath(secret,
                                     settings.DATA_DIR), format="text", rows=1)
    response = api.get(f"/v1/files/file-{dataset.id.hex}/content")
    assert response.status_code == 404 and b"top secret" not in b"".join(getattr(response, "streaming_content",
                                                                                 [response.content]))
    record("security", check="downloads confined", held="a row pointing outside DATA_DIR answers 404")


def test_local_models_come_only_from_the_model_roots(owner_client, settings, tiny_model_dir, tmp_path):
    settings.MODEL_ROOTS = [tmp_path.resolve()]
    (tmp_path / "link").symlink_to(tiny_model_dir)
    for outside in ("/etc", str(tiny_model_dir), str(tmp_path / "link"), str(tmp_path / ".." / "x")):
        response = owner_client.post("/models/", {"name": "probe", "source": "local", "local_path": outside})
        assert response.status_code == 400 and b"model directories" in response.content, outside
    assert not BaseModel.objects.filter(name="probe").exists()
    record("security", check="local base models confined",
           held="directories outside MODEL_ROOTS (also via a symlink or ..) are refused with one answer for all")


def test_trust_remote_code_is_off_unless_an_admin_sets_it(owner_client, api, settings, tiny_model_dir):
    settings.MODEL_ROOTS = [tiny_model_dir.parent.resolve()]
    response = owner_client.post("/models/", {"name": "remote", "source": "local", "local_path": str(tiny_model_dir),
                                              "trust_remote_code": "on", "public": "on"})
    assert response.status_code == 302, response.content[:500]
    model = BaseModel.objects.get(name="remote")
    assert model.trust_remote_code is False and model.public is False
    dataset = api.post("/v1/files", {"purpose": "fine-tune", "file": SimpleUploadedFile("t.jsonl", jsonl(CHAT_ROWS))})
    body = {"model": "remote", "training_file": dataset.json()["id"], "settings": {"trust_remote_code": True}}
    refused = api.post("/v1/fine_tuning/jobs", json.dumps(body), content_type="application/json")
    assert refused.status_code == 400 and "trust_remote_code" in refused.json()["error"]["message"]
    del body["settings"]
    created = api.post("/v1/fine_tuning/jobs", json.dumps(body), content_type="application/json")
    assert created.status_code == 200, created.content
    from webapp.jobs.models import Job

    assert Job.objects.get().config["trust_remote_code"] is False
    record("security", check="trust_remote_code", held="pages and API cannot turn it on; jobs run with it off")


def test_production_settings_pass_check_deploy(tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_ALLOW_ASYNC_UNSAFE"}  # tests only
    env = {**env, "DJANGO_SETTINGS_MODULE": "webapp.settings.production", "DATA_DIR": str(tmp_path),
           "SECRET_KEY": "x" * 20 + "-production-secret-key-for-the-deploy-check-" + "y" * 20}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    record("security", check="manage.py check --deploy", held=result.stdout.strip()[-200:] or result.stderr[-200:])
    assert result.returncode == 0, result.stdout + result.stderr


# The 2026 ASGI fixes: a missing or understated Content-Length no longer bypasses DATA_UPLOAD_MAX_MEMORY_SIZE
# (CVE-2026-33034, fixed in 5.2.13) or FILE_UPLOAD_MAX_MEMORY_SIZE (CVE-2026-5766, fixed in 5.2.14).
ASGI_UPLOAD_LIMIT_FIXES = {(5, 2): (5, 2, 14), (6, 0): (6, 0, 5)}


def test_django_is_pinned_at_a_release_with_the_asgi_upload_limit_fixes():
    import django

    pin = re.search(r"^django==([\d.]+)$", (Path(__file__).resolve().parents[2] / "requirements.txt").read_text(),
                    re.M | re.I)
    assert pin, "requirements.txt must pin django with =="
    pinned = tuple(int(part) for part in pin.group(1).split("."))
    assert pinned[:3] == django.VERSION[:3], "the installed Django is not the pinned one"
    assert pinned >= ASGI_UPLOAD_LIMIT_FIXES.get(pinned[:2], (99,)), f"django {pin.group(1)} lacks the 2026 fixes"
    record("security", check="Django release", held=f"django=={pin.group(1)} has the 2026 ASGI upload-limit fixes "
                                                   "(CVE-2026-33034, CVE-2026-5766)")


def test_a_key_revoked_by_another_process_stops_working_within_the_cache_bound(owner, monkeypatch):
    """Each process trusts a checked key for KEY_CACHE_SECONDS: a revocation made elsewhere (here: straight
    in the database, as another process's revoke_api_key would) reaches this process within that bound."""
    from webapp.accounts import keys

    now = [1000.0]
    monkeypatch.setattr(keys, "clock", lambda: now[0])
    api_key, raw = create_api_key(owner, name="cached")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/models").status_code == 200
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())  # no signal: another process
    now[0] += keys.KEY_CACHE_SECONDS - 0.5
    assert client.get("/v1/models").status_code == 200  # still within the bound: served from the cache
    now[0] += 1.0
    response = client.get("/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert keys.KEY_CACHE_SECONDS <= 10


def test_a_cached_key_of_a_user_deactivated_here_stops_at_once(owner, owner_key):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}")
    assert client.get("/v1/models").status_code == 200
    owner.is_active = False
    owner.save()
    assert client.get("/v1/models").status_code == 401
