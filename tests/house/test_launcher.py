"""`make run`'s launcher: serves the dashboard with a demo login, and stops every child on SIGTERM."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.support.processes import wait_for_http
from webapp.lib.demo_login import DEMO_PASSWORD, DEMO_USERNAME
from webapp.lib.embedded_redis import EmbeddedRedis, free_port, is_listening

ROOT = Path(__file__).resolve().parent.parent.parent


def test_embedded_redis_starts_answers_and_stops(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        server.stop()
    assert not is_listening("127.0.0.1", server.port)


def _children_of(pid: int) -> list[int]:
    result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


def _log_in(base_url: str) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{base_url}/accounts/login/").read()
    token = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode({"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "next": "/",
                                   "csrfmiddlewaretoken": token}).encode()
    request = urllib.request.Request(f"{base_url}/accounts/login/", data=form, headers={"Referer": base_url})
    return opener.open(request).read().decode()


@pytest.mark.stack
@pytest.mark.slow
def test_run_serves_the_dashboard_with_the_demo_login_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({"PORT": str(port), "DATA_DIR": str(tmp_path / "data")})
    log = open(tmp_path / "run.log", "wb")
    launcher = subprocess.Popen([sys.executable, "-m", "webapp.launcher", "run"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=180)
        dashboard = _log_in(f"http://127.0.0.1:{port}")
        assert 'data-testid="count-models">1<' in dashboard  # the demo model is there out of the box
        assert 'data-testid="count-datasets">1<' in dashboard
        output = (tmp_path / "run.log").read_text()
        assert f"http://localhost:{port}/" in output and DEMO_PASSWORD in output
        children = _children_of(launcher.pid)
        assert len(children) >= 2  # web server and worker
    finally:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        log.close()
    assert not is_listening("127.0.0.1", port)
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_the_demo_data_is_made_once(transactional_db, settings, tmp_path):
    from django.core.management import call_command

    from webapp.basemodels.models import BaseModel
    from webapp.datasets.models import Dataset

    settings.DATA_DIR = tmp_path
    call_command("setup_demo", stdout=open(os.devnull, "w"))
    call_command("setup_demo", stdout=open(os.devnull, "w"))
    demo = BaseModel.objects.get()
    assert demo.public and demo.has_chat_template and demo.parameter_count > 0
    dataset = Dataset.objects.get()
    assert dataset.format == "openai_chat" and dataset.rows == 64
    assert re.fullmatch(r"[0-9a-f]{64}", dataset.sha256)
