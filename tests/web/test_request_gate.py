"""webapp/lib/request_gate.py: at most ``slots`` GETs inside Django per process; a slot is freed when the
headers go out; requests with a body and websockets are never held."""

from __future__ import annotations

import asyncio

from webapp.lib.request_gate import RequestGate


class SlowApp:
    """An ASGI app that records how many requests are inside it at once; a request sends its headers, then
    waits ``after_start`` seconds before its body (a streamed download), or waits before the headers."""

    def __init__(self, before_start: float = 0.05, after_start: float = 0.0):
        self.inside = self.most_inside = 0
        self.before_start, self.after_start = before_start, after_start

    async def __call__(self, scope, receive, send):
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await asyncio.sleep(self.before_start)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            self.inside -= 1
            await asyncio.sleep(self.after_start)
            await send({"type": "http.response.body", "body": b"ok"})
        except BaseException:
            self.inside -= 1
            raise


def _request(gate, method="GET", kind="http"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def run():
        await gate({"type": kind, "method": method, "path": "/v1/models"}, receive, send)
        return sent

    return run()


def test_it_lets_in_at_most_slots_gets_and_answers_them_all():
    app = SlowApp()
    gate = RequestGate(app, slots=3)

    async def scenario():
        return await asyncio.gather(*(_request(gate) for _ in range(12)))

    answers = asyncio.run(scenario())
    assert app.most_inside == 3
    assert all([m["type"] for m in sent] == ["http.response.start", "http.response.body"] for sent in answers)


def test_a_streamed_response_frees_its_slot_when_the_headers_go_out():
    app = SlowApp(before_start=0.0, after_start=0.3)
    gate = RequestGate(app, slots=1)

    async def scenario():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(_request(gate) for _ in range(4)))
        return loop.time() - started

    assert asyncio.run(scenario()) < 0.6  # four 0.3 s bodies streamed side by side, not one after another


def test_posts_and_websockets_are_not_held_and_zero_slots_is_no_gate():
    for method, kind, slots in (("POST", "http", 1), ("GET", "websocket", 1), ("GET", "http", 0)):
        app = SlowApp()
        gate = RequestGate(app, slots=slots)

        async def scenario(gate=gate, method=method, kind=kind):
            await asyncio.gather(*(_request(gate, method, kind) for _ in range(5)))

        asyncio.run(scenario())
        assert app.most_inside == 5, (method, kind, slots)


def test_a_failing_request_gives_its_slot_back():
    class Failing:
        async def __call__(self, scope, receive, send):
            raise RuntimeError("view crashed")

    gate = RequestGate(Failing(), slots=1)

    async def scenario():
        for _ in range(3):  # with the slot lost, the second call would wait for ever
            try:
                await asyncio.wait_for(_request(gate), timeout=2)
            except RuntimeError:
                pass

    asyncio.run(scenario())
