"""The playground task: load the base model once, answer the prompt with it and with each adapter in turn (each
with its own conversation so far, for a follow-up), streaming the tokens to the page and storing each answer.

The session row decides: a delivery of a session that is not queued (already answered, or being answered by
another worker) is dropped.
"""

from __future__ import annotations

import logging
import time
import traceback
from functools import partial
from typing import Any

from webapp.lib.delivery_cap import is_row_id
from webapp.playground import actions, events
from webapp.playground.models import PlaygroundSession

from .celery import app
from .db import retry_db
from .delivery import capped_delivery

logger = logging.getLogger(__name__)

PUSH_EVERY_SECONDS = 0.1  # token pieces are batched: at most ~10 pushes a second per answer
TOUCH_EVERY_SECONDS = 10.0  # a long answer tells the database it is alive (the stall reaper waits much longer)


@app.task(name="worker.tasks.playground", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def playground(session_id: str) -> str:
    """Answer a queued playground session."""
    return run_playground_session(session_id)


def run_playground_session(session_id: str) -> str:
    """Answer ``session_id`` if it is queued. Returns what happened: dropped, succeeded or failed.

    The delivery is counted before it can fail, and capped at JOB_MAX_ATTEMPTS when none starts the session.
    """
    return capped_delivery(actions.SESSION_DELIVERIES, session_id, _start_and_answer)


def _start_and_answer(session_id: str) -> str:
    if not is_row_id(session_id):
        logger.error("playground: %r is not a session id; dropped", session_id)
        return "dropped"
    session = retry_db(lambda: actions.start_session(session_id), "start playground session")
    if session is None:
        logger.info("playground session %s is not queued; this delivery is dropped", session_id)
        return "dropped"
    try:
        _answer_all(session)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        logger.exception("playground session %s failed", session_id)
        technical = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        message = describe_failure(exc)
        retry_db(lambda: actions.fail_session(session_id, technical, message), "record playground failure")
        return "failed"
    retry_db(lambda: actions.finish_session(session_id), "finish playground session")
    return "succeeded"


def describe_failure(exc: BaseException) -> str:
    """The message people see for a failed session."""
    from lora_engine.device import is_out_of_memory
    from lora_engine.errors import LoraEngineError

    if is_out_of_memory(exc):
        return ("The worker ran out of memory answering. Pick fewer adapters or fewer new tokens, or use a smaller "
                "base model.")
    if isinstance(exc, LoraEngineError):
        return str(exc)
    return (f"The playground stopped because of an internal error ({type(exc).__name__}); the administrator can "
            "see the details. Trying again may work.")


def _adapter_dirs(session: PlaygroundSession) -> dict[str, Any]:
    from lora_engine.errors import LoraEngineError
    from webapp.adapters.models import Adapter

    found = {str(a.pk): a.path for a in Adapter.objects.filter(pk__in=session.adapter_ids)}
    missing = [a for a in session.adapter_ids if a not in found]
    if missing:
        raise LoraEngineError(f"adapter(s) {', '.join(missing)} were deleted after the prompt was sent; ask again "
                              "without them")
    return {adapter_id: found[adapter_id] for adapter_id in session.adapter_ids}


def _answer_all(session: PlaygroundSession) -> None:
    import torch

    from lora_engine.device import resolve_device
    from lora_engine.playground import MultiAdapterModel, render_messages, stop_token_ids
    from lora_engine.quant import load_tokenizer

    base = session.base_model
    revision = base.revision or None
    tokenizer = load_tokenizer(base.location, revision=revision, trust_remote_code=base.trust_remote_code)
    device = resolve_device("auto")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = MultiAdapterModel.from_pretrained(base.location, _adapter_dirs(session), device=device, revision=revision,
                                              trust_remote_code=base.trust_remote_code, dtype=dtype)
    prompts = {o["key"]: render_messages(tokenizer, session.messages_for(o["key"])) for o in session.outputs}
    longest = max(len(ids) for ids in prompts.values())
    retry_db(lambda: actions.record_prompt_tokens(session.id, longest), "record prompt tokens")
    stops = stop_token_ids(tokenizer, model.model)
    for output in session.outputs:
        key = output["key"]
        model.activate(None if key == "base" else key)
        retry_db(partial(actions.start_answer, session.id, key), "start answer")
        answer = _stream_answer(session, key, model, tokenizer, prompts[key], stops)
        retry_db(partial(actions.record_answer, session.id, key, *answer), "record answer")


def _stream_answer(session: PlaygroundSession, key: str, model, tokenizer, prompt_ids: list[int],
                   stops: set[int]) -> tuple[str, int, str, float]:
    """Generate one answer, pushing its text in small batches. Returns (text, tokens, finish_reason, seconds)."""
    from lora_engine.playground import IncrementalDecoder

    settings = session.settings
    decoder = IncrementalDecoder(tokenizer)
    started = last_push = last_touch = time.monotonic()
    sent_chars, pending = 0, ""
    for token in model.generate(prompt_ids, settings["max_new_tokens"], temperature=settings["temperature"],
                                top_p=settings["top_p"], seed=settings["seed"], stop_ids=stops):
        pending += decoder.push(token)
        if pending and time.monotonic() - last_push >= PUSH_EVERY_SECONDS:
            events.emit_tokens(session.id, key, sent_chars, pending, len(decoder.ids))
            sent_chars, pending, last_push = sent_chars + len(pending), "", time.monotonic()
        if time.monotonic() - last_touch >= TOUCH_EVERY_SECONDS:
            retry_db(partial(actions.touch_session, session.id), "touch playground session")
            last_touch = time.monotonic()
    pending += decoder.flush()
    if pending:
        events.emit_tokens(session.id, key, sent_chars, pending, len(decoder.ids))
    tokens = len(decoder.ids)
    finish_reason = "length" if tokens >= settings["max_new_tokens"] else "stop"
    return decoder.text, tokens, finish_reason, time.monotonic() - started
