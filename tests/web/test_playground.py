"""The playground page, its API (/api/playground/) and its websocket: who may ask what, and what is stored."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.support.playground import make_adapter_dir, save_base, upload
from webapp.asgi import application
from webapp.basemodels.actions import register_local_model
from webapp.playground import actions, events
from webapp.playground.models import PlaygroundSession

URL = "/api/playground/"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("playground")
    base = save_base(root / "base")
    return {"base": base, "qv": make_adapter_dir(base, root / "qv", 4, ("q_proj", "v_proj"), seed=1),
            "o": make_adapter_dir(base, root / "o", 2, ("o_proj",), seed=2)}


@pytest.fixture
def base_model(owner, tiny_dirs):
    return register_local_model(owner, "tiny-playground", str(tiny_dirs["base"]))


@pytest.fixture
def adapters(owner, base_model, tiny_dirs):
    return [upload(owner, base_model, tiny_dirs["qv"], "qv-r4"), upload(owner, base_model, tiny_dirs["o"], "o-r2")]


@pytest.fixture
def enqueued(monkeypatch) -> list[str]:
    sent: list[str] = []
    monkeypatch.setattr(actions, "enqueue_session", lambda session_id: sent.append(str(session_id)) or True)
    return sent


def ask(client: Client, base_model, adapters, prompt: str = "Hello?", **extra):
    body = {"base_model": str(base_model.id), "adapters": [str(a.id) for a in adapters], "prompt": prompt, **extra}
    return client.post(URL, json.dumps(body), content_type="application/json")


def test_it_works(api, base_model, adapters, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = ask(api, base_model, adapters, settings={"max_new_tokens": 16, "temperature": 0, "seed": 5})
    assert response.status_code == 201, response.content
    body = response.json()
    assert enqueued == [body["id"]]
    assert body["state"] == "queued"
    assert [o["label"] for o in body["outputs"]] == ["tiny-playground (base)", "qv-r4", "o-r2"]
    assert [o["key"] for o in body["outputs"]] == ["base", str(adapters[0].id), str(adapters[1].id)]
    assert body["settings"] == {"max_new_tokens": 16, "temperature": 0.0, "top_p": 0.9, "seed": 5}
    fetched = api.get(f"{URL}{body['id']}")
    assert fetched.status_code == 200 and fetched.json() == body
    assert [s["id"] for s in api.get(URL).json()["data"]] == [body["id"]]


def test_the_page_offers_the_users_models_and_adapters(owner_client, stranger_client, base_model, adapters, enqueued):
    page = owner_client.get("/playground/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/playground/"' in html and "tiny-playground" in html
    options = page.context["options"]
    assert {a["name"] for a in options["adapters"]} == {"qv-r4", "o-r2"}
    session = actions.create_session(base_model.owner, base_model, adapters, "Hi")
    shown = owner_client.get(f"/playground/{session.id}/")
    assert shown.status_code == 200 and shown.context["session"]["id"] == str(session.id)
    assert stranger_client.get(f"/playground/{session.id}/").status_code == 404
    assert stranger_client.get("/playground/").context["options"]["adapters"] == []


def test_it_validates_ownership(api, owner, stranger, stranger_client, base_model, adapters, tiny_dirs, enqueued):
    their_model = register_local_model(stranger, "their-tiny", str(tiny_dirs["base"]))
    their_adapter = upload(stranger, their_model, tiny_dirs["qv"], "theirs")
    assert ask(api, their_model, []).status_code == 404
    response = ask(api, base_model, [adapters[0], their_adapter])
    assert response.status_code == 404 and response.json()["error"]["param"] == "adapters"
    session = actions.create_session(owner, base_model, adapters, "Hi")
    assert stranger_client.get(f"{URL}{session.id}").status_code == 404
    assert stranger_client.get(f"{URL}not-an-id").status_code == 404
    assert [s["id"] for s in stranger_client.get(URL).json()["data"]] == []
    assert PlaygroundSession.objects.count() == 1


def test_it_rejects_bad_requests_and_stores_nothing(api, owner, base_model, adapters, tiny_dirs, enqueued):
    other_base = register_local_model(owner, "other-tiny", str(tiny_dirs["base"]))
    foreign = upload(owner, other_base, tiny_dirs["o"], "of-the-other-base")
    cases = [
        (ask(api, base_model, [adapters[0], foreign]), "adapters", "another base model"),
        (ask(api, base_model, [adapters[0]] * 5), "adapters", "at most 4"),
        (ask(api, base_model, [adapters[0]] * 2), "adapters", "once"),
        (ask(api, base_model, adapters, prompt="  "), "prompt", "prompt"),
        (ask(api, base_model, adapters, settings={"top_p": 0}), "settings", "top_p"),
        (ask(api, base_model, adapters, settings={"max_tokens": 9}), "settings", "max_tokens"),
    ]
    for response, param, words in cases:
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error
    assert PlaygroundSession.objects.count() == 0 and enqueued == []
    assert Client().get(URL).status_code == 401


def answered(owner, base_model, adapters, prompt: str, parent=None) -> PlaygroundSession:
    """A session every column has answered (the worker's own actions), each column differently."""
    session = actions.create_session(owner, base_model, adapters, prompt, parent=parent)
    actions.start_session(session.id)
    for output in session.outputs:
        actions.record_answer(session.id, output["key"], f"{output['label']} on {prompt}", 3, "stop", 0.1)
    return actions.finish_session(session.id)


def follow_up(client: Client, parent, prompt: str = "And then?", **extra):
    body = {"parent": str(parent.id), "prompt": prompt, **extra}
    return client.post(URL, json.dumps(body), content_type="application/json")


def test_a_follow_up_continues_each_columns_own_conversation(api, owner, base_model, adapters, enqueued,
                                                            django_capture_on_commit_callbacks):
    first = answered(owner, base_model, adapters, "Hello?")
    with django_capture_on_commit_callbacks(execute=True):
        response = follow_up(api, first, settings={"max_new_tokens": 8})
    assert response.status_code == 201, response.content
    body = response.json()
    assert enqueued == [body["id"]] and body["parent"] == str(first.id) and body["prompt"] == "And then?"
    assert body["base_model"]["id"] == str(base_model.id)
    assert [a["id"] for a in body["adapters"]] == [str(a.id) for a in adapters]
    assert body["settings"]["max_new_tokens"] == 8
    second = PlaygroundSession.objects.get(pk=body["id"])
    qv = str(adapters[0].id)
    assert second.messages_for(qv) == [{"role": "user", "content": "Hello?"},
                                       {"role": "assistant", "content": "qv-r4 on Hello?"},
                                       {"role": "user", "content": "And then?"}]
    assert second.messages_for("base")[1]["content"] == "tiny-playground (base) on Hello?"
    # a third turn carries both earlier turns, each column with its own answers
    actions.start_session(second.id)
    for output in second.outputs:
        actions.record_answer(second.id, output["key"], f"{output['label']} again", 3, "stop", 0.1)
    actions.finish_session(second.id)
    third = follow_up(api, second, prompt="Last one").json()
    assert third["settings"] == second.settings  # a follow-up keeps its parent's settings by default
    assert [m["content"] for m in PlaygroundSession.objects.get(pk=third["id"]).messages_for(qv)] == [
        "Hello?", "qv-r4 on Hello?", "And then?", "qv-r4 again", "Last one"]


def test_a_follow_up_validates_ownership_and_its_parent(api, owner, stranger, stranger_client, base_model, adapters,
                                                        tiny_dirs, enqueued):
    first = answered(owner, base_model, adapters, "Hello?")
    response = follow_up(stranger_client, first)
    assert response.status_code == 404 and response.json()["error"]["param"] == "parent"
    assert follow_up(stranger_client, first, base_model=str(base_model.id), adapters=[]).status_code == 404
    queued = actions.create_session(owner, base_model, adapters, "Still answering")
    other_base = register_local_model(owner, "other-tiny", str(tiny_dirs["base"]))
    cases = [
        (follow_up(api, queued), 400, "queued"),
        (follow_up(api, first, adapters=[str(adapters[0].id)]), 400, "parent's base model and adapters"),
        (follow_up(api, first, base_model=str(other_base.id), adapters=[]), 400, "parent's base model"),
        (follow_up(api, first, prompt=" "), 400, "Write a prompt"),
        (api.post(URL, json.dumps({"parent": 7, "prompt": "x"}), content_type="application/json"), 400, "parent"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.content
        assert words in response.json()["error"]["message"], response.json()
    assert PlaygroundSession.objects.count() == 2 and enqueued == []


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def socket(path: str, user) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost"),
               (b"cookie", f"sessionid={session_cookie(user)}".encode())]
    return WebsocketCommunicator(application, path, headers=headers)


def test_the_socket_streams_to_the_owner_only(transactional_db, owner, stranger, tiny_dirs, enqueued):
    base_model = register_local_model(owner, "tiny-socket", str(tiny_dirs["base"]))
    session = actions.create_session(owner, base_model, [], "Hi")
    path = f"/ws/playground/{session.id}/"

    async def scenario():
        refused = socket(path, stranger)
        connected, code = await refused.connect(timeout=5)
        assert not connected and code == 4403
        comm = socket(path, owner)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        first = json.loads(await comm.receive_from(timeout=5))
        assert first["type"] == "session" and first["session"]["state"] == "queued"
        await database_sync_to_async(events.emit_tokens)(session.id, "base", 0, "Hel", 2)
        assert json.loads(await comm.receive_from(timeout=5)) == {
            "type": "tokens", "key": "base", "offset": 0, "text": "Hel", "tokens": 2}
        await database_sync_to_async(actions.start_session)(session.id)
        pushed = json.loads(await comm.receive_from(timeout=5))
        assert pushed["type"] == "session" and pushed["session"]["state"] == "running"
        await comm.disconnect()

    async_to_sync(scenario)()


def test_a_session_whose_worker_died_is_failed_by_the_reaper(owner, base_model, adapters, enqueued, settings):
    settings.PLAYGROUND_STALL_SECONDS = 60
    stalled, alive, queued = (actions.create_session(owner, base_model, adapters, "Hi") for _ in range(3))
    for session in (stalled, alive):
        actions.start_session(session.id)
    actions.record_answer(stalled.id, "base", "Hello", 2, "stop", 0.5)
    long_ago = PlaygroundSession.objects.get(pk=stalled.id).updated_at - timedelta(minutes=5)
    PlaygroundSession.objects.filter(pk__in=[stalled.id, alive.id]).update(updated_at=long_ago)
    actions.touch_session(alive.id)  # its worker is generating a long answer

    assert actions.reap_stalled_sessions() == [stalled.id]
    stalled.refresh_from_db()
    assert stalled.state == "failed" and "stopped" in stalled.error_message
    assert [o["state"] for o in stalled.outputs] == ["done", "failed", "failed"]  # the finished answer is kept
    assert stalled.outputs[0]["text"] == "Hello"
    states = dict(PlaygroundSession.objects.values_list("pk", "state"))
    assert (states[alive.id], states[queued.id]) == ("running", "queued")
    assert actions.reap_stalled_sessions() == []


def test_a_queued_session_whose_message_was_lost_is_sent_again(owner, base_model, adapters, enqueued):
    from worker.celery import app
    from worker.reconciler import playground_reconciler

    session = actions.create_session(owner, base_model, adapters, "Hi")  # no message: Redis lost it
    reconciler = playground_reconciler(app)  # looks in the real broker; resends through `enqueued`
    assert reconciler.scan() == []  # first sighting: it may be between its commit and its enqueue
    assert reconciler.scan() == [str(session.id)]
    assert enqueued == [str(session.id)]
