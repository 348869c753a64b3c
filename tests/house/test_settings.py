"""Settings come from the environment, and production settings pass `check --deploy` with no warnings."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def run_manage(env_overrides: dict, *args: str) -> subprocess.CompletedProcess:
    dropped = ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_production_settings_pass_check_deploy(tmp_path):
    result = run_manage(
        {
            "DJANGO_SETTINGS_MODULE": "webapp.settings.production",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
            "ALLOWED_HOSTS": "studio.example.com",
            "DATA_DIR": str(tmp_path),
        },
        "check", "--deploy", "--fail-level", "WARNING",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = run_manage({"DJANGO_SETTINGS_MODULE": "webapp.settings.production", "DATA_DIR": str(tmp_path),
                         "SECRET_KEY": ""}, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in production" in result.stderr


def test_database_url_selects_postgresql_and_sqlite_is_the_default(tmp_path):
    code = "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    pg = run_manage({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x", "DATA_DIR": str(tmp_path)},
                    "shell", "--no-imports", "-c", code)
    assert pg.stdout.strip() == "django.db.backends.postgresql", pg.stderr
    lite = run_manage({"DATA_DIR": str(tmp_path)}, "shell", "--no-imports", "-c", code)
    assert lite.stdout.strip() == "django.db.backends.sqlite3", lite.stderr


def test_a_generated_secret_key_is_kept_in_the_data_dir(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    env = {"DATA_DIR": str(tmp_path), "SECRET_KEY": ""}
    first = run_manage(env, "shell", "--no-imports", "-c", code).stdout.strip()
    second = run_manage(env, "shell", "--no-imports", "-c", code).stdout.strip()
    assert len(first) >= 50 and first == second
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
