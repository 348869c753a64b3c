"""The Celery app. Configured from Django settings (CELERY_* names); tasks live in worker.tasks.

Run one worker process per device, each with one job at a time::

    CUDA_VISIBLE_DEVICES=0 celery -A worker.celery worker -Q gpu,default --concurrency 1 --prefetch-multiplier 1

Every worker also runs the job maintenance timer (worker.maintenance): the reaper (expired leases) and the
reconciler (jobs queued in the database but missing from the broker), at start and periodically.
"""

import logging
import os

from celery import Celery
from celery.signals import celeryd_init, worker_ready, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

logger = logging.getLogger(__name__)

app = Celery("lora_studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("worker.tasks", "worker.merge_tasks", "worker.gguf_tasks", "worker.playground_tasks")
# One job per worker process: never reserve a second message while training (acks_late keeps the running
# one unacknowledged until it ends). A lost broker connection must not cancel a running job either.
app.conf.worker_disable_prefetch = True
app.conf.worker_cancel_long_running_tasks_on_connection_loss = False

UNSAFE_LOAD_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@celeryd_init.connect
def refuse_unsafe_environment(**_kwargs) -> None:
    """Workers load checkpoints written by earlier attempts: never with unpickling switched back on."""
    if os.environ.get(UNSAFE_LOAD_VARIABLE):
        message = (f"refusing to start: {UNSAFE_LOAD_VARIABLE} is set, which makes torch.load unpickle "
                   "arbitrary code from checkpoint files. Unset it and start the worker again.")
        logger.critical(message)
        raise SystemExit(f"LoRA Studio worker: {message}")


@worker_ready.connect
def start_job_maintenance(sender=None, **_kwargs) -> None:
    from worker.maintenance import start_maintenance

    start_maintenance(app)


@worker_shutdown.connect
def stop_job_maintenance(**_kwargs) -> None:
    from worker.maintenance import stop_maintenance

    stop_maintenance()
