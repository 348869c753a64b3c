"""The OpenAPI 3.1 document for /v1 and /api, written as a route table.

Routes that other areas add under /api later and that this table does not describe yet are still listed
(found in the URL resolver), marked as undocumented, so the document never silently misses an endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver

from .openapi_schemas import SCHEMAS, ref


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # path | query
    schema: dict = field(default_factory=lambda: {"type": "string"})
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    response: str | None  # schema name; None for a binary download
    params: tuple[Param, ...] = ()
    body: str | None = None
    body_type: str = "application/json"
    public: bool = False
    description: str = ""


FILE_ID = Param("file_id", "path", description="A file id, e.g. file-…")
JOB_ID = Param("fine_tuning_job_id", "path", description="A job id, e.g. ftjob-…")
MODEL_ID = Param("model", "path", description="A base model's name or a fine-tuned model id (ft:…)")
NATIVE_JOB_ID = Param("job_id", "path", {"type": "string", "format": "uuid"})
ADAPTER_ID = Param("adapter_id", "path", {"type": "string", "format": "uuid"})
MERGE_ID = Param("merge_id", "path", {"type": "string", "format": "uuid"})
AFTER = Param("after", description="The last id of the previous page.")
JOBS = Param("jobs", description="Comma-separated job ids (uuid or ftjob-…).")


def _limit(default: int, maximum: int) -> Param:
    return Param("limit", schema={"type": "integer", "minimum": 1, "maximum": maximum, "default": default})


BASE_MODEL = Param("base_model", description="Name (or id) of the base model whose tokenizer to use.")
MAX_SEQ_LEN = Param("max_seq_len", schema={"type": "integer", "minimum": 8, "default": 512})
V1, FT, NATIVE = "OpenAI-compatible: files", "OpenAI-compatible: fine-tuning", "Native"
MODELS = "OpenAI-compatible: models"

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/v1/files", "Upload a training file (multipart; streamed to disk, validated)", V1,
              "File", body="FileUpload", body_type="multipart/form-data",
              description="Rejected files answer 400 naming the problem and its line; nothing is kept."),
    Operation("get", "/v1/files", "List files", V1, "FileList",
              (Param("purpose"), Param("order", schema={"enum": ["asc", "desc"]}), AFTER, _limit(10000, 10000))),
    Operation("get", "/v1/files/{file_id}", "Retrieve a file", V1, "File", (FILE_ID,)),
    Operation("delete", "/v1/files/{file_id}", "Delete a file (refused with 409 while jobs use it)", V1,
              "Deleted", (FILE_ID,)),
    Operation("get", "/v1/files/{file_id}/content", "Download a file's content (streamed, Range supported)", V1,
              None, (FILE_ID,)),
    Operation("post", "/v1/fine_tuning/jobs", "Create a fine-tuning job", FT, "FineTuningJob",
              body="FineTuningJobCreate",
              description="LoRA settings travel in the extra body field `lora`; other native settings in "
                          "`settings`."),
    Operation("get", "/v1/fine_tuning/jobs", "List fine-tuning jobs (newest first)", FT, "FineTuningJobList",
              (AFTER, _limit(20, 100))),
    Operation("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}", "Retrieve a job", FT, "FineTuningJob",
              (JOB_ID,)),
    Operation("post", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel", "Cancel a queued or running job", FT,
              "FineTuningJob", (JOB_ID,)),
    Operation("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events", "List a job's events (newest first)", FT,
              "FineTuningJobEventList", (JOB_ID, AFTER, _limit(20, 1000))),
    Operation("get", "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", "List a job's checkpoints", FT,
              "FineTuningJobCheckpointList", (JOB_ID, AFTER, _limit(10, 100))),
    Operation("get", "/v1/models", "List base models and fine-tuned adapters", MODELS, "ModelList"),
    Operation("get", "/v1/models/{model}", "Retrieve a model", MODELS, "Model", (MODEL_ID,)),
    Operation("delete", "/v1/models/{model}", "Delete a fine-tuned model (its adapter)", MODELS, "Deleted",
              (MODEL_ID,)),
    Operation("get", "/api/datasets/{dataset_id}/preview", "Preview rows as the model will see them", NATIVE,
              "DatasetPreview", (Param("dataset_id", "path", description="A file id or dataset UUID"), BASE_MODEL,
                                 Param("n", schema={"type": "integer", "minimum": 1, "maximum": 50}), MAX_SEQ_LEN)),
    Operation("get", "/api/datasets/{dataset_id}/stats", "Token-length statistics for a base model", NATIVE,
              "TokenStats", (Param("dataset_id", "path"), BASE_MODEL, MAX_SEQ_LEN)),
    Operation("get", "/api/jobs/estimate", "Memory estimate (full vs LoRA vs QLoRA) for job settings", NATIVE,
              "MemoryEstimate", (Param("base_model", description="Base model id (UUID)"),),
              description="Any job setting (rank, batch_size, max_seq_len, quantization, ...) as a query parameter."),
    Operation("get", "/api/jobs/{job_id}", "A job's live state (progress, step, ETA, memory)", NATIVE, "JobState",
              (NATIVE_JOB_ID,)),
    Operation("delete", "/api/jobs/{job_id}", "Delete an ended job without an adapter, with its metrics and "
              "checkpoints (409 while it runs or while its adapter exists)", NATIVE, "Deleted", (NATIVE_JOB_ID,)),
    Operation("get", "/api/jobs/{job_id}/metrics", "A job's metric points (history, then after a step or seq)",
              NATIVE, "Metrics", (NATIVE_JOB_ID, Param("after_step", schema={"type": "integer"}),
                                  Param("after_seq", schema={"type": "integer"}),
                                  Param("max_points", schema={"type": "integer", "minimum": 10}),
                                  Param("limit", schema={"type": "integer", "minimum": 1}),
                                  Param("split", schema={"enum": ["train", "eval"]}))),
    Operation("get", "/api/jobs/{job_id}/log", "The tail of a job's log (its events)", NATIVE, "JobLog",
              (NATIVE_JOB_ID, Param("after_id", schema={"type": "integer"}),
               Param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000}))),
    Operation("get", "/api/jobs/{job_id}/metrics.csv", "A job's metrics as CSV", NATIVE, None, (NATIVE_JOB_ID,)),
    Operation("get", "/api/jobs/{job_id}/metrics.jsonl", "A job's metrics as JSON lines", NATIVE, None,
              (NATIVE_JOB_ID,)),
    Operation("post", "/api/jobs/{job_id}/checkpoints/{step}/adapter", "Make an adapter of a job's checkpoint "
              "(a copy of its files; idempotent; 409 once newer checkpoints replaced it)", NATIVE, "Adapter",
              (NATIVE_JOB_ID, Param("step", "path", {"type": "integer", "minimum": 0}))),
    Operation("get", "/api/adapters/", "List adapters", NATIVE, "Adapter"),
    Operation("get", "/api/adapters/{adapter_id}", "Retrieve an adapter", NATIVE, "Adapter", (ADAPTER_ID,)),
    Operation("delete", "/api/adapters/{adapter_id}", "Delete an adapter", NATIVE, "Deleted", (ADAPTER_ID,)),
    Operation("get", "/api/adapters/{adapter_id}/download", "Download an adapter as a zip (PEFT layout; Range)",
              NATIVE, None, (ADAPTER_ID,)),
    Operation("get", "/api/adapters/{adapter_id}/analysis", "ΔW singular-value spectra and effective ranks",
              NATIVE, "AdapterAnalysis", (ADAPTER_ID,)),
    Operation("post", "/api/adapters/{adapter_id}/reduce", "A new adapter of lower rank (truncated SVD)", NATIVE,
              "Adapter", (ADAPTER_ID,), body="RankReduction"),
    Operation("get", "/api/adapters/{adapter_id}/gguf", "The adapter as a llama.cpp LoRA GGUF (built on the first "
              "download; 422 for an unsupported architecture, 507 when the disk is full)", NATIVE, None, (ADAPTER_ID,)),
    Operation("post", "/api/adapters/{adapter_id}/merge", "Merge an adapter into its base model (idempotent)", NATIVE,
              "Merge", (ADAPTER_ID,), body="MergeRequest",
              description="202 when queued (or a failed merge queued again); 200 with the existing merge otherwise."),
    Operation("get", "/api/adapters/{adapter_id}/merges", "List an adapter's merges", NATIVE, "MergeList",
              (ADAPTER_ID,)),
    Operation("get", "/api/merges/{merge_id}", "Retrieve a merge (state, progress, verification)", NATIVE, "Merge",
              (Param("merge_id", "path", {"type": "string", "format": "uuid"}),)),
    Operation("get", "/api/merges/{merge_id}/download", "Download a merged model as a .tar (Range; 409 until it "
              "succeeded)", NATIVE, None, (Param("merge_id", "path", {"type": "string", "format": "uuid"}),)),
    Operation("post", "/api/merges/{merge_id}/gguf", "Export a succeeded merge as a llama.cpp GGUF model (a worker "
              "builds it; one export per merge)", NATIVE, "GGUFExport", (MERGE_ID,),
              description="202 when queued (or a failed export queued again); 200 with the export already requested "
              "otherwise; 409 while the merge has not succeeded. Poll GET /api/merges/{merge_id} (its gguf_export) "
              "until the state is succeeded, then download."),
    Operation("get", "/api/merges/{merge_id}/gguf/download", "Download a merged model's GGUF (Range; 409 until the "
              "export succeeded)", NATIVE, None, (MERGE_ID,)),
    Operation("get", "/api/compare", "Compare jobs side by side", NATIVE, "Compare", (JOBS,)),
    Operation("get", "/api/compare.csv", "The comparison as CSV", NATIVE, None, (JOBS,)),
    Operation("get", "/api/sweeps", "List rank sweeps (newest first)", NATIVE, "SweepList"),
    Operation("post", "/api/sweeps", "Launch a rank sweep: one job per rank, the same data, seed and split", NATIVE,
              "Sweep", body="SweepCreate", description="201 with the sweep; 400 naming the rank and setting a job "
              "would be refused for (no sweep and no job is stored then)."),
    Operation("get", "/api/sweeps/{sweep_id}", "A sweep with its jobs and the recommended rank", NATIVE, "Sweep",
              (Param("sweep_id", "path", {"type": "string", "format": "uuid"}),
               Param("tolerance", schema={"type": "number", "minimum": 0, "maximum": 0.99},
                     description="Recommend again with this tolerance (default: the sweep's)."))),
    Operation("get", "/api/playground/", "List playground sessions (newest first)", NATIVE, "PlaygroundSessionList"),
    Operation("post", "/api/playground/", "Ask a base model and up to four adapters the same prompt (or follow up a "
              "session)", NATIVE, "PlaygroundSession", body="PlaygroundCreate",
              description="201 with the queued session; a worker answers each column in turn, streamed to "
              "/ws/playground/{session_id}/; poll GET /api/playground/{session_id} otherwise."),
    Operation("get", "/api/playground/{session_id}", "A playground session with its answers so far", NATIVE,
              "PlaygroundSession", (Param("session_id", "path", {"type": "string", "format": "uuid"}),)),
    Operation("get", "/api/openapi.json", "This document", NATIVE, None, public=True),
    Operation("get", "/api/docs", "This document as a page", NATIVE, None, public=True),
)

ERROR_RESPONSES = {
    "400": "Bad input: the message names the parameter (and the line, for data).",
    "401": "No or a wrong API key.", "404": "No such object (or another user's).",
    "413": "The request body is too large.",
}


def _operation_json(op: Operation) -> dict:
    error = {"content": {"application/json": {"schema": ref("Error")}}}
    if op.response is None:
        ok: dict[str, Any] = {"description": "The file, streamed.",
                              "content": {"application/octet-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": ref(op.response)}}}
    responses: dict[str, Any] = {"200": ok}
    if not op.public:
        responses.update({code: {"description": text, **error} for code, text in ERROR_RESPONSES.items()})
    result: dict[str, Any] = {
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{op.method}_{op.path}").strip("_"),
        "summary": op.summary, "tags": [op.tag], "responses": responses,
        "parameters": [{"name": p.name, "in": p.where, "required": p.where == "path", "schema": p.schema,
                        **({"description": p.description} if p.description else {})} for p in op.params],
    }
    if op.description:
        result["description"] = op.description
    if op.body:
        result["requestBody"] = {"required": True, "content": {op.body_type: {"schema": ref(op.body)}}}
    if op.public:
        result["security"] = []
    return result


def _route_paths(patterns: list, prefix: str = "") -> list[str]:
    """Every route in the URLconf as an OpenAPI-style path (``<uuid:job_id>`` -> ``{job_id}``)."""
    found = []
    for pattern in patterns:
        route = prefix + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        if isinstance(pattern, URLResolver):
            found.extend(_route_paths(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern):
            found.append("/" + route)
    return found


def _undocumented(paths: dict) -> dict:
    extra = {}
    documented = {re.sub(r"{\w+}", "{}", p) for p in paths}
    for route in _route_paths(get_resolver().url_patterns):
        if route.startswith(("/v1/", "/api/")) and re.sub(r"{\w+}", "{}", route) not in documented:
            extra[route] = {"get": {"summary": "(not described yet)", "tags": [NATIVE],
                                    "responses": {"200": {"description": "See the route's view."}}}}
    return extra


def openapi_document(server_url: str = "/") -> dict:
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation_json(op)
    paths.update(_undocumented(paths))
    return {
        "openapi": "3.1.0",
        "info": {"title": "LoRA Studio API", "version": "1",
                 "description": "OpenAI-compatible fine-tuning under /v1 (point the official openai client at "
                                "base_url=http://HOST/v1 with a LoRA Studio API key) and native endpoints under "
                                "/api. Authenticate with 'Authorization: Bearer <API key>' (make one on the API keys "
                                "page, /accounts/keys/) or a browser session (send X-CSRFToken on writes)."},
        "servers": [{"url": server_url}],
        "security": [{"bearerAuth": []}, {"sessionAuth": []}],
        "tags": [{"name": name} for name in (V1, FT, MODELS, NATIVE)],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A LoRA Studio API key (lsk-…)."},
                "sessionAuth": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
    }
