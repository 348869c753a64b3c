"""LoRA Studio settings. Everything that differs between installs comes from environment variables.

| variable        | default                                  | meaning                                    |
| --------------- | ---------------------------------------- | ------------------------------------------ |
| DATABASE_URL    | sqlite file DATA_DIR/db.sqlite3          | postgresql://user@host:5432/db (psycopg 3) |
| REDIS_URL       | redis://127.0.0.1:6379/0                 | Celery broker and Channels layer           |
| DATA_DIR        | ./data                                   | uploads, adapters, checkpoints, merges     |
| SECRET_KEY      | generated once into DATA_DIR/secret_key  | Django secret                              |
| DEBUG           | false                                    | Django debug pages                         |
| ALLOWED_HOSTS   | localhost,127.0.0.1,[::1]                | comma-separated host names                 |
| PORT            | 8000                                     | port `make run` serves on                  |
| WEB_CONCURRENCY | 1                                        | web server (uvicorn) worker processes      |
| DB_POOL_SIZE    | 10                                       | PostgreSQL pool per web process (0: none)  |
| WEB_REQUEST_SLOTS | 4                                      | GETs inside Django at once per web process |
| MODEL_ROOTS     | DATA_DIR/models                          | directories local base models may live in  |
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from webapp.lib.channel_layers import live_layer
from webapp.lib.env import env_bool, env_int, env_list, env_str, persistent_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env_str("SECRET_KEY") or persistent_secret_key(DATA_DIR)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
PORT = env_int("PORT", 8000)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "webapp.accounts",
    "webapp.basemodels",
    "webapp.datasets",
    "webapp.jobs",
    "webapp.adapters",
    "webapp.api",
    "webapp.dashboard",
    "webapp.compare",
    "webapp.playground",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "webapp.lib.request_guard.RejectNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "webapp.accounts.middleware.ApiKeyMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.accounts.middleware.LoginRequiredMiddleware",
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Workers and the web server are separate processes: wait for locks instead of failing at once,
    # and use a file for the test database too, so a worker subprocess sees what the test wrote.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_db.sqlite3")}
# The web server's processes (webapp.server sets LORA_STUDIO_WEB_SERVER) keep a pool of up to DB_POOL_SIZE
# PostgreSQL connections each: without one, every request under ASGI opens and closes its own connection
# (DB_CONN_MAX_AGE=0) or leaves one open per request thread. Celery workers keep their plain connections
# (one long-lived thread each, and their retry logic reconnects by itself). DB_POOL_SIZE=0 turns the pool off.
WEB_SERVER_PROCESS = env_bool("LORA_STUDIO_WEB_SERVER", False)
DB_POOL_SIZE = env_int("DB_POOL_SIZE", 10)
if WEB_SERVER_PROCESS and DB_POOL_SIZE > 0 and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections (Django refuses both at once)
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, DB_POOL_SIZE), "max_size": DB_POOL_SIZE, "timeout": env_int("DB_POOL_TIMEOUT", 30)}
# GET/HEAD requests a web process lets into Django at once (webapp/lib/request_gate.py); 0: no limit.
WEB_REQUEST_SLOTS = env_int("WEB_REQUEST_SLOTS", 4)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Uploads stream to disk in chunks; nothing big is ever held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler",
                        "webapp.lib.upload_handlers.CleanTemporaryFileUploadHandler"]
# Same filesystem as the data: uploads are moved into place, not copied. The web server spools request bodies
# here too, not in /tmp (webapp/lib/asgi_body.py).
FILE_UPLOAD_TEMP_DIR = DATA_DIR / "tmp"
FILE_UPLOAD_TEMP_DIR.mkdir(exist_ok=True)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024  # non-file request bodies (JSON API) are capped
# The web server refuses a body past MAX_UPLOAD_BYTES (views that take files) or DATA_UPLOAD_MAX_MEMORY_SIZE
# (every other view) before storing it (webapp/lib/body_limits.py).
MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 20 * 1024**3)

# The only server directories users may register as local base models (comma-separated; symlinks are resolved,
# so a link inside a root to a directory outside it is refused too). Hub models come from the HF cache instead.
MODEL_ROOTS = [Path(root).resolve() for root in env_list("MODEL_ROOTS", str(DATA_DIR / "models"))]

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [REDIS_URL],
            "capacity": 1000,
            "expiry": 60,
            "group_expiry": 86400,
        },
    },
    # Live job updates: Redis pub/sub, one message per web process however many pages watch; its names carry
    # the Redis database number, since pub/sub is shared by every database of the server.
    "live": live_layer(REDIS_URL),
}

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A message a worker took but never acknowledged (the worker died, or the job outlasts the timeout) goes back to
# the queue after the visibility timeout; workers look for such messages every CELERY_RESTORE_SECONDS (kombu's
# default sweep, 10 s x a throttle of 10, made one plain period). A redelivery of a running job is dropped: the
# database lease, not the broker, decides who runs a job.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
                                   "unacked_restore_interval": env_int("CELERY_RESTORE_SECONDS", 100),
                                   "unacked_restore_throttle": 1}
CELERY_TASK_ROUTES = {"worker.tasks.train": {"queue": "gpu"}, "worker.tasks.merge": {"queue": "gpu"},
                      "worker.tasks.export_gguf": {"queue": "gpu"},
                      "worker.tasks.playground": {"queue": "gpu"}}
CELERY_TASK_DEFAULT_QUEUE = "default"

# Job leases: a worker holds a job while it renews its lease; an expired lease means the worker died.
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 45)
JOB_HEARTBEAT_SECONDS = env_int("JOB_HEARTBEAT_SECONDS", 10)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)
JOB_RECONCILE_SECONDS = env_int("JOB_RECONCILE_SECONDS", 60)  # how often workers re-send jobs the broker lost
# A running playground session whose worker has not written for this long is failed (the worker died).
PLAYGROUND_STALL_SECONDS = env_int("PLAYGROUND_STALL_SECONDS", 120)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the pages' fetch() calls read it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
