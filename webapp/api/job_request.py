"""Reading an OpenAI ``POST /fine_tuning/jobs`` body into what ``webapp.jobs.actions.create_job`` takes.

Types and shapes are checked here (with OpenAI-style parameter names in the errors); ranges, unknown target
modules and everything that needs the base model are checked by ``create_job`` itself, whose errors the view
reports with :func:`api_param` mapping our setting names back to the request's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset

from .errors import ApiError, is_finite_number
from .ids import FILE_PREFIX, parse_fine_tuned_model_id, parse_uuid
from .serializers.fine_tuning import BASE_LEARNING_RATE

TOP_LEVEL_FIELDS = ("model", "training_file", "validation_file", "suffix", "seed", "hyperparameters", "method",
                    "lora", "settings", "integrations", "metadata")
HYPERPARAMETERS = {"n_epochs": "epochs", "batch_size": "batch_size", "learning_rate_multiplier": "learning_rate"}
LORA_FIELDS = ("rank", "alpha", "dropout", "targets", "quantization", "use_rslora", "use_dora")
MAX_SUFFIX = 64

# create_job's setting names -> where the value came from in the request (for error params).
API_PARAMS = {
    "epochs": "hyperparameters.n_epochs", "batch_size": "hyperparameters.batch_size",
    "learning_rate": "hyperparameters.learning_rate_multiplier", "seed": "seed", "dataset": "training_file",
    "validation_dataset": "validation_file", "base_model": "model", "suffix": "suffix",
    **{name: f"lora.{name}" for name in LORA_FIELDS},
}


@dataclass
class JobRequest:
    base_model: BaseModel
    dataset: Dataset
    validation_dataset: Dataset | None
    suffix: str
    settings: dict[str, Any] = field(default_factory=dict)


def api_param(setting_name: str | None) -> str | None:
    if setting_name is None:
        return None
    return API_PARAMS.get(setting_name, f"settings.{setting_name}")


def _base_model(user, model: Any) -> BaseModel:
    if not isinstance(model, str) or not model.strip():
        raise ApiError("model is required: the name of a base model (GET /v1/models lists them).", param="model")
    found = BaseModel.objects.named(user, model)
    if found is not None:
        return found
    if parse_fine_tuned_model_id(model) is not None:
        raise ApiError(f"Model {model} is a fine-tuned adapter; fine-tune its base model instead.",
                       param="model", code="model_not_available")
    raise ApiError(f"Model {model!r} does not exist or is not available to you. GET /v1/models lists the base "
                   "models you can fine-tune.", param="model", code="model_not_available")


def _dataset(user, value: Any, param: str) -> Dataset:
    dataset_uuid = parse_uuid(value, FILE_PREFIX) if isinstance(value, str) else None
    dataset = Dataset.objects.visible_to(user).filter(pk=dataset_uuid).first() if dataset_uuid else None
    if dataset is None:
        raise ApiError(f"{param} {value!r} is not a file you uploaded: upload it with POST /v1/files and use the "
                       "returned id (file-...).", param=param, code=f"invalid_{param}")
    if dataset.purpose != "fine-tune":
        raise ApiError(f"{param} {value!r} was uploaded with purpose {dataset.purpose!r}, not 'fine-tune'.",
                       param=param, code=f"invalid_{param}")
    return dataset


def _suffix(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_SUFFIX or any(ord(c) < 32 for c in value):
        raise ApiError(f"suffix must be a string of at most {MAX_SUFFIX} printable characters.", param="suffix")
    return value.strip()


def _hyperparameters(body: dict) -> dict:
    """The supervised hyperparameters from ``method`` or the older top-level ``hyperparameters``."""
    method = body.get("method")
    from_method = None
    if method is not None:
        if not isinstance(method, dict):
            raise ApiError("method must be an object like {'type': 'supervised', ...}.", param="method")
        if method.get("type") != "supervised":
            raise ApiError(f"Only supervised fine-tuning is supported (got method.type {method.get('type')!r}).",
                           param="method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise ApiError("method.supervised must be an object.", param="method.supervised")
        from_method = supervised.get("hyperparameters")
    top_level = body.get("hyperparameters")
    if from_method is not None and top_level is not None:
        raise ApiError("Give hyperparameters once: in method.supervised.hyperparameters or at the top level.",
                       param="hyperparameters")
    chosen = from_method if from_method is not None else top_level
    prefix = "method.supervised.hyperparameters" if from_method is not None else "hyperparameters"
    if chosen is None:
        return {}
    if not isinstance(chosen, dict):
        raise ApiError(f"{prefix} must be an object.", param=prefix)
    return _hyperparameter_settings(chosen, prefix)


def _hyperparameter_settings(values: dict, prefix: str) -> dict:
    settings: dict[str, Any] = {}
    for name, value in values.items():
        param = f"{prefix}.{name}"
        if name not in HYPERPARAMETERS:
            raise ApiError(f"Unknown hyperparameter {name!r}: use {', '.join(HYPERPARAMETERS)}.", param=param)
        if value == "auto" or value is None:
            continue
        if name == "learning_rate_multiplier":
            if not is_finite_number(value) or value <= 0:
                raise ApiError(f"learning_rate_multiplier must be a positive number or 'auto' (got {value!r}).",
                               param=param)
            settings["learning_rate"] = value * BASE_LEARNING_RATE
        else:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ApiError(f"{name} must be a positive integer or 'auto' (got {value!r}).", param=param)
            settings[HYPERPARAMETERS[name]] = value
    return settings


def _lora_settings(lora: Any) -> dict:
    if lora is None:
        return {}
    if not isinstance(lora, dict):
        raise ApiError("lora must be an object such as {'rank': 8, 'alpha': 16, 'targets': ['q_proj', 'v_proj']}.",
                       param="lora")
    unknown = sorted(set(lora) - set(LORA_FIELDS))
    if unknown:
        raise ApiError(f"Unknown lora setting(s) {', '.join(unknown)}: use {', '.join(LORA_FIELDS)}.",
                       param=f"lora.{unknown[0]}")
    settings = {name: value for name, value in lora.items() if value is not None}
    targets = settings.get("targets")
    if isinstance(targets, str):
        settings["targets"] = [t.strip() for t in targets.split(",") if t.strip()]
    elif targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise ApiError("lora.targets must be a list of module names (or one comma-separated string).",
                       param="lora.targets")
    for name in ("rank",):
        if name in settings and (not isinstance(settings[name], int) or isinstance(settings[name], bool)):
            raise ApiError(f"lora.{name} must be an integer (got {settings[name]!r}).", param=f"lora.{name}")
    for name in ("alpha", "dropout"):
        if name in settings and not is_finite_number(settings[name]):
            raise ApiError(f"lora.{name} must be a number (got {settings[name]!r}).", param=f"lora.{name}")
    for name in ("use_rslora", "use_dora"):
        if name in settings and not isinstance(settings[name], bool):
            raise ApiError(f"lora.{name} must be true or false.", param=f"lora.{name}")
    return settings


def _merge(*parts: tuple[str, dict]) -> dict:
    merged: dict[str, Any] = {}
    for source, part in parts:
        for name, value in part.items():
            if name in merged:
                raise ApiError(f"The setting {name!r} is given twice (also in {source}).", param=f"{source}.{name}")
            merged[name] = value
    return merged


def _unsupported(body: dict) -> None:
    unknown = [name for name in body if name not in TOP_LEVEL_FIELDS]
    if unknown:
        raise ApiError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if body.get("integrations"):
        raise ApiError("Integrations (e.g. Weights & Biases) are not supported by LoRA Studio.",
                       param="integrations")
    if body.get("metadata"):
        raise ApiError("metadata is not supported by LoRA Studio.", param="metadata")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31):
        raise ApiError(f"seed must be an integer from 0 to 2147483647 (got {seed!r}).", param="seed")
    extra = body.get("settings")
    if extra is not None and not isinstance(extra, dict):
        raise ApiError("settings must be an object of LoRA Studio job settings.", param="settings")


def parse_job_request(body: dict, user) -> JobRequest:
    """Check a create-job body and resolve its model and files for ``user``.

    Raises:
        ApiError: a malformed or unknown field, an unknown model or file (400, naming the parameter).
    """
    _unsupported(body)
    base_model = _base_model(user, body.get("model"))
    dataset = _dataset(user, body.get("training_file"), "training_file")
    validation = body.get("validation_file")
    validation_dataset = _dataset(user, validation, "validation_file") if validation is not None else None
    seed = {"seed": body["seed"]} if body.get("seed") is not None else {}
    settings = _merge(("hyperparameters", _hyperparameters(body)), ("lora", _lora_settings(body.get("lora"))),
                      ("seed", seed), ("settings", body.get("settings") or {}))
    return JobRequest(base_model=base_model, dataset=dataset, validation_dataset=validation_dataset,
                      suffix=_suffix(body.get("suffix")), settings=settings)
