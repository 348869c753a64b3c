"""Registering base models: a directory the workers can read, or a hub id already in the local cache."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from .hub import HubModelNotCachedError, cached_snapshot_dir
from .inspect import ModelDirError, describe_model_dir
from .models import BaseModel

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


class ModelRejected(ValueError):  # noqa: N818 - the name in the team interface
    """The model cannot be registered. ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@transaction.atomic
def register_local_model(owner, name: str, local_path: str, public: bool = False) -> BaseModel:
    """Register a model directory the workers can read (inspected now; raises ModelDirError if unusable)."""
    details = describe_model_dir(local_path)
    return BaseModel.objects.create(
        owner=owner, name=name, source=BaseModel.Source.LOCAL, local_path=str(local_path), public=public, **details
    )


def _check_name(owner, name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ModelRejected("Give the model a name (the id scripts will use, e.g. 'qwen2-0.5b').", param="name")
    if not NAME_PATTERN.match(name):
        raise ModelRejected(
            "The name may hold letters, digits and . _ - : / (up to 200 characters), starting with a letter or "
            f"digit; {name[:60]!r} does not.", param="name")
    if BaseModel.objects.visible_to(owner).filter(name=name).exists():  # another user's own models: not a clash
        raise ModelRejected(_taken(name), param="name")
    return name


def _taken(name: str) -> str:
    return f"You already have a model named {name!r} (your own or a shared one); choose another name."


def model_roots() -> list[Path]:
    """The server directories local models may be registered from (settings.MODEL_ROOTS)."""
    return [Path(root) for root in settings.MODEL_ROOTS]


def _check_model_root(local_path: str) -> str:
    """The resolved directory, if it lies inside a model root. Checked before anything about the path is read,
    so a user cannot probe which server directories exist (the answer is the same for every outside path)."""
    if "\x00" in local_path or not Path(local_path).is_absolute():
        raise ModelRejected("Give the model directory as an absolute path on the server.", param="local_path")
    resolved = Path(local_path).resolve()
    roots = model_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        where = ", ".join(str(root) for root in roots) or "(none configured)"
        raise ModelRejected(
            f"Local models can only be registered from the server's model directories: {where}. Copy the model "
            "into one of them (or ask an admin to add its directory to MODEL_ROOTS).", param="local_path")
    return str(resolved)


def register_model(owner, name: str, hub_id: str | None = None, revision: str = "", local_path: str | None = None,
                   public: bool = False) -> BaseModel:
    """Inspect and record a base model. ``trust_remote_code`` always starts off (only admins turn it on).

    Args:
        owner: the user the record belongs to.
        name: unique id scripts refer to the model by.
        hub_id: a Hugging Face hub id ('org/name'); it must already be in the local cache (no network).
        revision: hub branch, tag or commit ('' for the default branch).
        local_path: a directory with config.json inside one of :func:`model_roots` (exactly one of hub_id /
            local_path).
        public: visible to every user.

    Raises:
        ModelRejected: bad name, both or neither source given, a directory outside the model roots or unreadable,
            hub id not cached.
    """
    name = _check_name(owner, name)
    hub_id, local_path, revision = (hub_id or "").strip(), (local_path or "").strip(), (revision or "").strip()
    if bool(hub_id) == bool(local_path):
        raise ModelRejected("Give either a hub id or a local directory (exactly one of them).", param="hub_id")
    if len(revision) > 100:
        raise ModelRejected("The revision is longer than 100 characters.", param="revision")
    if local_path:
        local_path = _check_model_root(local_path)
        source, directory, param = BaseModel.Source.LOCAL, local_path, "local_path"
    else:
        source, param = BaseModel.Source.HUB, "hub_id"
        try:
            directory = str(cached_snapshot_dir(hub_id, revision))
        except HubModelNotCachedError as exc:
            raise ModelRejected(str(exc), param="hub_id") from exc
    try:
        details = describe_model_dir(directory)
    except ModelDirError as exc:
        raise ModelRejected(str(exc), param=param) from exc
    try:
        with transaction.atomic():
            return BaseModel.objects.create(
                owner=owner, name=name, source=source, hub_id=hub_id, revision=revision if hub_id else "",
                local_path=local_path, public=public, trust_remote_code=False, **details,
            )
    except IntegrityError as exc:  # a concurrent registration of the same owner took the name
        raise ModelRejected(_taken(name), param="name") from exc


@transaction.atomic
def delete_model(model: BaseModel) -> None:
    """Delete a registered model record (files are never touched). Refused while jobs or adapters use it.

    Raises:
        ModelRejected: jobs or adapters still refer to the model.
    """
    from django.db.models import ProtectedError

    try:
        model.delete()
    except ProtectedError as exc:
        count = len(exc.protected_objects)
        raise ModelRejected(f"{model.name} is used by {count} job(s) or adapter(s); delete those first.",
                            param="model") from exc
