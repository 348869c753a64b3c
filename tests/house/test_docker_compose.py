"""docker-compose.yml has the production services `docker compose config` expects (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent.parent / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_postgres_redis_web_worker_with_healthchecks():
    services = load()["services"]
    assert {"postgres", "redis", "web", "worker"} <= set(services)
    for name in ("postgres", "redis", "web"):
        assert "test" in services[name]["healthcheck"], name


def test_worker_reserves_a_gpu_and_shares_the_data_volume_with_web():
    compose = load()
    worker, web = compose["services"]["worker"], compose["services"]["web"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
    mount = lambda service: {v.split(":")[0] for v in service["volumes"]}  # noqa: E731
    shared = mount(worker) & mount(web)
    assert shared and shared <= set(compose["volumes"])
    assert "--concurrency" in " ".join(worker["command"]) and "1" in worker["command"]


def test_redis_keeps_its_data_and_never_evicts():
    command = " ".join(load()["services"]["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_services_read_configuration_from_an_env_file():
    services = load()["services"]
    for name in ("web", "worker"):
        assert services[name]["env_file"], name
        assert services[name]["environment"]["DJANGO_SETTINGS_MODULE"] == "webapp.settings.production"


def test_web_runs_uvicorn_through_webapp_server_with_its_worker_count():
    web = load()["services"]["web"]
    assert "python -m webapp.server --host 0.0.0.0 --port 8000" in " ".join(web["command"])
    assert web["environment"]["WEB_CONCURRENCY"].startswith("${WEB_CONCURRENCY")
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "webapp.server"' in dockerfile
