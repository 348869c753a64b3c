"""The OpenAPI component schemas: the objects the API returns and accepts (OpenAI's field names)."""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), description: str = "") -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _list_of(item: str) -> dict:
    return _obj({
        "object": {"const": "list"}, "data": {"type": "array", "items": ref(item)},
        "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
        "has_more": {"type": "boolean", "description": "Pass the last id as `after` to read the next page."},
    }, ("object", "data", "has_more"))


INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
UNIX = {"type": "integer", "description": "Unix time in seconds."}
UNIX_OR_NULL = {"type": ["integer", "null"], "description": "Unix time in seconds."}
AUTO_INT = {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]}
JOB_STATUSES = ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]

HYPERPARAMETERS = _obj({
    "n_epochs": {**AUTO_INT, "description": "Passes over the training file (1–1000)."},
    "batch_size": {**AUTO_INT, "description": "Rows per optimizer update."},
    "learning_rate_multiplier": {"oneOf": [{"const": "auto"}, {"type": "number", "exclusiveMinimum": 0}],
                                 "description": "Multiplies the default LoRA learning rate 2e-4."},
})

LORA_SETTINGS = _obj({
    "rank": {"type": "integer", "minimum": 1, "maximum": 4096, "description": "r; at most the layer's width."},
    "alpha": {"type": "number", "exclusiveMinimum": 0, "description": "The update is scaled by α/r."},
    "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "targets": {"oneOf": [{"type": "array", "items": STR}, STR],
                "description": "Module names (suffix match) such as q_proj, v_proj, or 'all-linear'."},
    "quantization": {"enum": ["none", "int8", "nf4"], "description": "nf4 = QLoRA."},
    "use_rslora": {**BOOL, "description": "Scale by α/√r instead of α/r."},
    "use_dora": BOOL,
}, description="LoRA Studio's extra body field (send it with the OpenAI client's `extra_body`).")

ERROR = _obj({"error": _obj({
    "message": {**STR, "description": "What was wrong (the line, for data) and what to do."},
    "type": STR, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
    "problems": {"type": "array", "description": "Every problem found (data files: with line numbers)."},
}, ("message", "type", "param", "code"))}, ("error",))

FILE = _obj({
    "id": {**STR, "examples": ["file-0f8c3e0a9b1d4c2e8f7a6b5c4d3e2f1a"]}, "object": {"const": "file"},
    "bytes": INT, "created_at": UNIX, "filename": STR, "purpose": {"const": "fine-tune"},
    "status": {"enum": ["uploaded", "processed", "error"]}, "status_details": {"type": ["string", "null"]},
    "expires_at": UNIX_OR_NULL, "format": {**STR, "description": "Detected data format."}, "rows": INT,
    "sha256": STR,
}, ("id", "object", "bytes", "created_at", "filename", "purpose"))

FILE_UPLOAD = _obj({
    "file": {"type": "string", "contentMediaType": "application/octet-stream",
             "description": "JSONL (chat, prompt/completion, alpaca, sharegpt, text), JSON, CSV, Parquet or TXT."},
    "purpose": {"const": "fine-tune"},
}, ("file", "purpose"))

DELETED = _obj({"id": STR, "object": STR, "deleted": BOOL}, ("id", "object", "deleted"))

JOB = _obj({
    "id": {**STR, "examples": ["ftjob-3b1f0c8e2a4d4f6b9c7e5a3d1b2c4e6f"]}, "object": {"const": "fine_tuning.job"},
    "created_at": UNIX, "finished_at": UNIX_OR_NULL, "model": STR,
    "fine_tuned_model": {"type": ["string", "null"], "description": "ft:<base>:<name>:<adapter id>"},
    "organization_id": {"const": "org-lora-studio"}, "status": {"enum": JOB_STATUSES},
    "training_file": STR, "validation_file": {"type": ["string", "null"]},
    "result_files": {"type": "array", "items": STR}, "trained_tokens": {"type": ["integer", "null"]},
    "hyperparameters": ref("Hyperparameters"),
    "method": _obj({"type": {"const": "supervised"},
                    "supervised": _obj({"hyperparameters": ref("Hyperparameters")})}),
    "seed": INT, "estimated_finish": UNIX_OR_NULL, "integrations": {"type": "array", "maxItems": 0},
    "metadata": {"type": "null"}, "user_provided_suffix": {"type": ["string", "null"]},
    "error": {"oneOf": [{"type": "null"}, _obj({"code": STR, "message": STR, "param": {"type": ["string", "null"]}})]},
    "lora": ref("LoraSettings"), "started_at": UNIX_OR_NULL, "current_step": INT,
    "total_steps": {"type": ["integer", "null"]}, "progress": NUM,
    "memory_estimate": {"type": ["object", "null"]}, "peak_memory_bytes": {"type": ["integer", "null"]},
}, ("id", "object", "created_at", "model", "status", "training_file", "hyperparameters", "seed"))

JOB_CREATE = _obj({
    "model": {**STR, "description": "A base model's name (GET /v1/models)."},
    "training_file": {**STR, "description": "A file id from POST /v1/files."},
    "validation_file": {"type": ["string", "null"]},
    "suffix": {"type": ["string", "null"], "maxLength": 64},
    "seed": {"type": ["integer", "null"], "minimum": 0},
    "hyperparameters": ref("Hyperparameters"),
    "method": _obj({"type": {"const": "supervised"},
                    "supervised": _obj({"hyperparameters": ref("Hyperparameters")})}),
    "lora": ref("LoraSettings"),
    "settings": {"type": "object", "description": "Any other LoRA Studio job setting by its native name "
                 "(max_seq_len, warmup_steps, max_steps, eval_fraction, save_every, ...)."},
}, ("model", "training_file"))

EVENT = _obj({
    "id": STR, "object": {"const": "fine_tuning.job.event"}, "created_at": UNIX,
    "level": {"enum": ["info", "warn", "error"]}, "message": STR, "data": {"type": "object"},
    "type": {"enum": ["message", "metrics"]},
}, ("id", "object", "created_at", "level", "message"))

CHECKPOINT = _obj({
    "id": STR, "object": {"const": "fine_tuning.job.checkpoint"}, "created_at": UNIX,
    "fine_tuning_job_id": STR, "fine_tuned_model_checkpoint": STR, "step_number": INT,
    "metrics": _obj({name: {"type": ["number", "null"]} for name in (
        "step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
        "full_valid_loss", "full_valid_mean_token_accuracy")}),
}, ("id", "object", "created_at", "fine_tuning_job_id", "step_number", "metrics"))

MODEL = _obj({
    "id": STR, "object": {"const": "model"}, "created": UNIX, "owned_by": STR,
    "kind": {"enum": ["base", "adapter"]}, "root": STR, "adapter_id": STR, "download_url": STR,
}, ("id", "object", "created", "owned_by"))

FREE_FORM = {"type": "object", "additionalProperties": True}

SCHEMAS: dict[str, dict] = {
    "Error": ERROR, "File": FILE, "FileUpload": FILE_UPLOAD, "FileList": _list_of("File"), "Deleted": DELETED,
    "Hyperparameters": HYPERPARAMETERS, "LoraSettings": LORA_SETTINGS, "FineTuningJob": JOB,
    "FineTuningJobCreate": JOB_CREATE, "FineTuningJobList": _list_of("FineTuningJob"),
    "FineTuningJobEvent": EVENT, "FineTuningJobEventList": _list_of("FineTuningJobEvent"),
    "FineTuningJobCheckpoint": CHECKPOINT, "FineTuningJobCheckpointList": _list_of("FineTuningJobCheckpoint"),
    "Model": MODEL, "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}),
    "DatasetPreview": {**FREE_FORM, "description": "The first rows as turns with tokens marked trained or not."},
    "TokenStats": {**FREE_FORM, "description": "Token-length statistics and histogram; rows truncated."},
    "Metrics": {**FREE_FORM, "description": "Metric points: seq, step, split and the step's values."},
    "JobState": {**FREE_FORM, "description": "State, progress, step, total steps, ETA, error, memory."},
    "JobLog": {**FREE_FORM, "description": "The job's events, oldest first, after an event id."},
    "MemoryEstimate": {**FREE_FORM, "description": "Bytes needed for full fine-tuning, LoRA and QLoRA, broken down."},
    "AdapterAnalysis": {**FREE_FORM, "description": "Per layer: singular values of ΔW, effective rank at 90%/99%."},
    "RankReduction": _obj({"rank": {"type": "integer", "minimum": 1, "description": "The new, lower rank."}},
                          ("rank",)),
    "Adapter": {**FREE_FORM, "description": "An adapter: rank, alpha, targets, lineage, sizes, download_url."},
    "Merge": {**FREE_FORM, "description": "A merge of an adapter into its base: state (queued, running, succeeded, "
              "failed), stage, progress, attempt, error_message, times, peak_memory_bytes, max_abs_diff (merged vs "
              "base+adapter logits), archive_bytes, archive_sha256, download_url (only once succeeded), gguf_export "
              "(the merged model's GGUF export, or null)."},
    "GGUFExport": {**FREE_FORM, "description": "A merged model's GGUF export, built by a worker: state (queued, "
                   "running, succeeded, failed), stage (queued, writing, checksumming, done, failed), progress, "
                   "attempt, error_message, times, size_bytes, sha256 and download_url (only once succeeded)."},
    "MergeList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Merge")}}),
    "Compare": {**FREE_FORM, "description": "jobs: one row per job (rank, alpha, final and best eval loss, tokens/s, "
                "peak memory, trainable parameters, state); config_differences: the settings that differ."},
    "Sweep": {**FREE_FORM, "description": "A rank sweep: its ranks, alpha rule, tolerance, the jobs' compare rows "
              "(by rank), states, finished, and recommendation (the smallest rank whose best eval loss is within "
              "the tolerance of the best; null until a job has a loss)."},
    "PlaygroundSession": {**FREE_FORM, "description": "A prompt answered by a base model and up to four of its "
                          "adapters: state (queued, running, succeeded, failed), outputs (one per column, the base "
                          "model's first: key, label, state, text, tokens, finish_reason, seconds), prompt, settings, "
                          "parent and history (the earlier turns of a follow-up), prompt_tokens, error_message."},
    "PlaygroundSessionList": _obj({"object": {"const": "list"},
                                   "data": {"type": "array", "items": ref("PlaygroundSession")}}),
    "PlaygroundCreate": _obj({
        "base_model": {**STR, "description": "The id of the base model that answers (required unless parent)."},
        "adapters": {"type": "array", "items": STR, "maxItems": 4, "description": "Adapter ids of that base model, "
                     "in display order."},
        "prompt": {**STR, "description": "The user's message."},
        "settings": _obj({"max_new_tokens": {"type": "integer", "minimum": 1},
                          "temperature": {"type": "number", "minimum": 0}, "top_p": {"type": "number"},
                          "seed": {"type": "integer"}}),
        "parent": {**STR, "description": "A succeeded session of yours to follow up: its base model and adapters "
                   "answer again, each with its own conversation so far."},
    }, ("prompt",)),
    "SweepList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": ref("Sweep")}}),
    "SweepCreate": _obj({
        "dataset": {**STR, "description": "The training file's id (file-…)."},
        "base_model": {**STR, "description": "A base model's id or name."},
        "validation_dataset": {**STR, "description": "A validation file's id; without it (and without "
                               "settings.eval_fraction) 10% of the rows are held out."},
        "ranks": {"type": "array", "items": {"type": "integer", "minimum": 1}, "default": [1, 2, 4, 8, 16, 32, 64]},
        "alpha_rule": {"enum": ["alpha=r", "alpha=2r", "fixed", "rslora"], "default": "alpha=2r"},
        "fixed_alpha": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "tolerance": {"type": "number", "minimum": 0, "maximum": 0.99, "default": 0.01},
        "name": STR,
        "settings": {**FREE_FORM, "description": "Job settings shared by every rank (those of POST "
                     "/v1/fine_tuning/jobs' settings), without rank and alpha."},
    }, ("dataset", "base_model")),
    "MergeRequest": _obj({"dtype": {"enum": ["auto", "fp16", "bf16", "fp32"], "default": "auto",
                                    "description": "The merged weights' dtype; auto keeps the base's own."}}),
}
