"""The new-job form: one field per setting in ``webapp.jobs.configs.JOB_SETTINGS`` plus the data and model.

The form only parses (types, choices, which records the user may pick); ``create_job`` validates the
settings as a whole and its ``JobRejected`` problems are shown on the form.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from django import forms

from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset

from .configs import JOB_SETTINGS, default_targets_for
from .models import Job

MAX_SUFFIX = 64


@dataclass(frozen=True)
class SettingSpec:
    """What the form needs to know about one setting (read from whatever JOB_SETTINGS holds)."""

    name: str
    default: Any
    help: str
    label: str
    kind: str  # int | float | bool | str | choice
    choices: tuple[str, ...] = ()
    optional: bool = False
    group: str = ""


def _read(item: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = item.get(name) if isinstance(item, dict) else getattr(item, name, None)
        if value is not None:
            return value
    return default


def _kind(raw_kind: Any, default: Any, choices: tuple) -> str:
    if choices:
        return "choice"
    if isinstance(raw_kind, type):
        raw_kind = raw_kind.__name__
    if raw_kind:
        text = str(raw_kind).lower()
        for kind in ("bool", "int", "float", "choice", "str"):
            if text.startswith(kind):
                return kind
    for kind, python_type in (("bool", bool), ("int", int), ("float", float)):
        if isinstance(default, python_type):
            return kind
    return "str"


def setting_specs() -> list[SettingSpec]:
    """JOB_SETTINGS (a dict name -> spec, or a list of specs; specs are dicts or objects) as SettingSpecs."""
    from .configs import JOB_SETTINGS

    items = list(JOB_SETTINGS.items()) if isinstance(JOB_SETTINGS, dict) else [(None, s) for s in JOB_SETTINGS]
    specs = []
    for key, item in items:
        name = key or _read(item, "name", "key")
        default = _read(item, "default")
        raw_choices = _read(item, "choices", default=())
        choices = tuple(str(c[0]) if isinstance(c, (tuple, list)) else str(c) for c in raw_choices)
        kind = _kind(_read(item, "kind", "type", "python_type"), default, choices)
        optional = bool(_read(item, "optional", "nullable", default=default is None))
        specs.append(SettingSpec(
            name=name, default=default, help=_read(item, "help", "help_text", "doc", default=""),
            label=_read(item, "label", default=name.replace("_", " ").capitalize()), kind=kind, choices=choices,
            optional=optional, group=_read(item, "group", "section", default=""),
        ))
    return specs


def _field(spec: SettingSpec) -> forms.Field:
    common = {"label": spec.label, "help_text": spec.help, "required": not spec.optional and spec.kind != "bool"}
    if spec.kind == "bool":
        return forms.BooleanField(**common)
    if spec.kind == "int":
        return forms.IntegerField(**common)
    if spec.kind == "float":
        return forms.FloatField(**common)
    if spec.kind == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
    return forms.CharField(max_length=500, **common)


class JobForm(forms.Form):
    """Data, model, a suffix, and every training setting."""

    suffix = forms.CharField(max_length=MAX_SUFFIX, required=False, label="Name",
                             help_text="A short name for the job and its adapter (letters, digits, - and _).")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), label="Training data",
                                     help_text="An uploaded data set (Datasets page).")
    validation_dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.none(), required=False, label="Validation data",
        help_text="Optional: a separate file for eval loss (otherwise the eval fraction below is held out).")
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.none(), label="Base model",
                                        help_text="The frozen model the adapter is trained on.")

    def __init__(self, user, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        datasets = Dataset.objects.visible_to(user)
        self.fields["dataset"].queryset = datasets
        self.fields["validation_dataset"].queryset = datasets
        self.fields["base_model"].queryset = BaseModel.objects.visible_to(user)
        for name in ("dataset", "base_model"):  # with one choice (a new install's demo), choose it
            choices = list(self.fields[name].queryset.values_list("pk", flat=True)[:2])
            if len(choices) == 1:
                self.initial.setdefault(name, choices[0])
        if "base_model" not in self.initial:  # several models: the one the user's latest job trained on
            latest = Job.objects.filter(owner=user).order_by("-created_at").values_list("base_model", flat=True)[:1]
            model = self.fields["base_model"].queryset.filter(pk__in=latest).values_list("pk", flat=True).first()
            if model is not None:
                self.initial["base_model"] = model
        self.specs = setting_specs()
        chosen = self.initial.get("base_model")
        chosen_model = self.fields["base_model"].queryset.filter(pk=chosen).first() if _is_pk(chosen) else None
        if chosen_model is not None:  # a relaunch keeps its job's targets
            self.initial.setdefault("targets", default_targets_for(chosen_model.config))
        for spec in self.specs:
            self.fields[spec.name] = _field(spec)
            if spec.name not in self.initial and spec.default is not None:
                self.initial[spec.name] = spec.default

    def default_targets_by_model(self) -> dict[str, str]:
        """Each choosable base model's default targets (and ``""``: the generic default), for the page's script
        that makes the targets field follow the chosen model."""
        defaults = {"": JOB_SETTINGS["targets"].default}
        for model in self.fields["base_model"].queryset.only("pk", "config"):
            defaults[str(model.pk)] = default_targets_for(model.config)
        return defaults

    def clean(self) -> dict[str, Any]:
        """Targets left at the generic default follow the base model: on a model without q_proj and v_proj
        (GPT-2) they could only fail, so a browser without the page's script gets the model's default."""
        cleaned = super().clean()
        model = cleaned.get("base_model")
        if model is not None and cleaned.get("targets") == JOB_SETTINGS["targets"].default:
            cleaned["targets"] = default_targets_for(model.config)
        return cleaned

    def setting_fields(self) -> list[forms.BoundField]:
        return [self[spec.name] for spec in self.specs]

    def settings(self) -> dict[str, Any]:
        """The cleaned training settings, for ``create_job``."""
        return {spec.name: self.cleaned_data.get(spec.name) for spec in self.specs}

    def show_problems(self, param: str | None, problems: list[str], message: str) -> None:
        """Put create_job's problems next to the field they name (or above the form)."""
        field = param if param in self.fields else None
        for problem in problems or [message]:
            self.add_error(field, problem)


def _is_pk(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def settings_from_job(job) -> dict[str, Any]:
    """The flat settings a job was launched with (for "launch again with changes" and OOM retries)."""
    config = job.config or {}
    sections = [config.get(part, {}) or {} for part in ("lora", "quant", "data", "train")]
    aliases = {"quantization": ("quant", "mode")}
    flat: dict[str, Any] = {}
    for spec in setting_specs():
        if spec.name in aliases:
            part, key = aliases[spec.name]
            value = (config.get(part) or {}).get(key, spec.default)
        else:
            value = next((s[spec.name] for s in sections if spec.name in s), config.get(spec.name, spec.default))
        if spec.name == "targets" and isinstance(value, (list, tuple)):
            value = ",".join(value)
        flat[spec.name] = value
    return flat


def initial_from_job(job) -> dict[str, Any]:
    """Form initial values reproducing ``job`` (records the user can no longer see are left empty)."""
    initial = settings_from_job(job)
    initial.update(dataset=job.dataset_id, base_model=job.base_model_id, suffix=relaunch_suffix(job),
                   validation_dataset=job.validation_dataset_id)
    return initial


def relaunch_suffix(job) -> str:
    """A name for a relaunch of ``job`` that none of its owner's jobs has, so the two adapters can be told apart:
    ``run`` -> ``run-2`` (``run-3`` when that is taken; relaunching ``run-2`` suggests ``run-3`` too). A job
    without a name starts from its adapter's name (base model and rank)."""
    name = job.suffix or re.sub(r"[^\w.\-]+", "-", f"{job.base_model.name}-r{job.rank}")
    stem = re.sub(r"-\d{1,3}$", "", name)
    taken = set(Job.objects.filter(owner_id=job.owner_id, suffix__startswith=stem).values_list("suffix", flat=True))
    number = 2
    while f"{stem}-{number}" in taken:
        number += 1
    ending = f"-{number}"
    return stem[:MAX_SUFFIX - len(ending)] + ending
