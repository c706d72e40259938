"""uvicorn's httptools protocol, answering hot key-value requests straight from the parser.

For a LimeDB get/set/del or /v1/kv request that is not pipelined behind another response, the
protocol skips the ASGI request cycle (scope completion, a task per request, message dicts,
the FastAPI stack) and runs `hot.serve` as soon as the message is complete. Most reads finish
without ever suspending, so the coroutine is stepped once, eagerly, and the reply is written in
the same callback; an operation that does wait (a write waiting for its fsync, a replica's
answer) is stepped on by a callback on the future it waits for (`WireProtocol._step`), still
without a task. Every other request - and hot requests pipelined behind an unfinished
response or sent with `Expect: 100-continue` - takes uvicorn's normal ASGI path unchanged, where
the raw-ASGI `FastPath` still serves the hot routes. Both paths answer through `hot.serve`.

Stepping outside a task is only done for a service that says it is safe (`inline_safe = True`,
as LocalService does): its coroutines only await futures, never `asyncio.timeout()` or anything
else that needs a current task. Any other service's operations run in a task from the start.

Connection limits and timeouts come from `bounded.BoundedProtocol`, the base class. A refusal
of a hot request is answered as soon as it is known, before its body arrives; the body is then
read and dropped.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

import httptools

from limedb.api import access, hot
from limedb.api import operations as ops
from limedb.api.bounded import BoundedProtocol
from limedb.api.errors import ApiError
from limedb.api.fastpath import admitted, credentials_of, overloaded
from limedb.api.state import NodeState


class _NoEvent:
    """Stands in for the asyncio.Event uvicorn sets on a cycle when the connection drops."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class HotCycle:
    """One hot request in flight on a connection; quacks like uvicorn's cycle where it looks."""

    __slots__ = (
        "body",
        "credentials",
        "disconnected",
        "held",
        "keep_alive",
        "limit",
        "message_event",
        "method",
        "query",
        "raw_path",
        "received",
        "reply",
        "response_complete",
        "route",
        "size",
        "started",
    )

    def __init__(
        self, route: str, method: str, raw_path: bytes, query: bytes, keep_alive: bool
    ) -> None:
        self.route = route
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.keep_alive = keep_alive
        self.body: list[bytes] = []
        self.credentials: tuple[bytes | None, bytes | None] = (None, None)
        self.size = 0
        self.held = 0  # body bytes counted against max_buffered_body_bytes
        self.limit = 0
        self.reply: ops.Reply | None = None
        self.received = False  # the whole request (body included) has been read
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NO_EVENT
        self.started = time.perf_counter()

    @property
    def response_started(self) -> bool:
        return self.response_complete  # a hot response is written in one piece


class WireProtocol(BoundedProtocol):
    """The node's HTTP/1.1 protocol: uvicorn's, with hot key-value requests served in place."""

    serve_hot: bool = True

    def on_headers_complete(self) -> None:
        if self.counted == "probe":
            if self.admit_probe():
                super().on_headers_complete()
                self.cycle.keep_alive = False
            return
        cycle = self.cycle
        if (
            not self.serve_hot
            or self.expect_100_continue
            or (cycle is not None and not cycle.response_complete)
        ):
            super().on_headers_complete()
            return
        self.reading_body()  # (super() does it for the requests it sees)
        parsed = httptools.parse_url(self.url)
        raw_path: bytes = parsed.path
        method = self.parser.get_method().decode("ascii")
        route = hot.classify(method, raw_path)
        state = self.node_state
        if route is None and state.admission.full() and admitted(raw_path):
            # Any route (FastAPI's too) is refused here, before an ASGI cycle and a task exist:
            # under a flood of requests, refusing must cost next to nothing.
            route = "overloaded"
        elif route is None or self.parser.should_upgrade():
            super().on_headers_complete()
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        hot_cycle = HotCycle(route, method, raw_path, parsed.query or b"", keep_alive)
        self.cycle = hot_cycle  # type: ignore[assignment]
        hot_cycle.credentials = credentials_of(self.headers)
        if route == "overloaded":
            hot_cycle.reply = overloaded()
        elif not hot.allowed(route, method):
            hot_cycle.reply = hot.method_not_allowed(route, method)
        elif state.admission.full():
            # Refused before the body is read: refusing stays cheap under any load.
            hot_cycle.reply = overloaded()
        elif access.anonymous_refused(state, hot_cycle.credentials):
            # No credentials where they are required: 401 before the body is buffered.
            hot_cycle.reply = hot.error_reply(access.credentials_required())
        elif hot.has_body(route, method):
            hot_cycle.limit = hot.body_limit(state, route)
            for name, value in self.headers:
                if name == b"content-length":
                    if not value.isdigit():
                        hot_cycle.reply = hot.error_reply(ApiError(400, "invalid Content-Length"))
                    elif int(value) > hot_cycle.limit:
                        hot_cycle.reply = hot.too_large(hot_cycle.limit)
                    break
        if hot_cycle.reply is not None:
            # Answered now, before the body arrives; the body is then read and dropped.
            self._respond(hot_cycle, hot_cycle.reply)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, HotCycle):
            super().on_body(body)
            return
        if cycle.reply is not None:
            return  # already refused; the rest of the body is read and dropped
        cycle.size += len(body)
        if cycle.size > cycle.limit:
            cycle.reply = hot.too_large(cycle.limit)
            self._respond(cycle, cycle.reply)
            return
        budget = self.node_state.connections
        budget.http_buffered_bytes += len(body)
        cycle.held += len(body)
        cycle.body.append(body)
        if budget.http_buffered_bytes > self.node_state.config.max_buffered_body_bytes:
            budget.http_buffer_refusals += 1
            cycle.reply = hot.bodies_full()
            self._respond(cycle, cycle.reply)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if not isinstance(cycle, HotCycle):
            super().on_message_complete()
            return
        self.reading = None
        cycle.received = True
        if cycle.reply is not None:  # answered when it was refused
            if not cycle.keep_alive:
                self.transport.close()
            return
        state = self.node_state
        admission = state.admission
        if not admission.try_enter():
            waiter = admission.enqueue()
            if waiter is None:
                self._respond(cycle, overloaded())
                return
            task = self.loop.create_task(self._queued(cycle, waiter))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        body = b"".join(cycle.body) if cycle.body else b""
        coro = hot.serve(
            state, cycle.route, cycle.method, cycle.raw_path, cycle.query, body, cycle.credentials
        )
        if state.service is None or not state.service.inline_safe:
            task = self.loop.create_task(self._finish(cycle, coro))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        self._step(cycle, coro)

    def _step(
        self, cycle: HotCycle, coro: Coroutine[Any, Any, ops.Reply], _done: Any = None
    ) -> None:
        """Run the coroutine of an inline-safe operation up to its next wait, without a task:
        what asyncio.Task does for it, minus the task. When the future it waits on is done,
        this is called again and steps it on (the coroutine's own `await` then takes the
        future's result or raises its exception); when it returns, the reply is written."""
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self.node_state.admission.leave()
            self._respond(cycle, done.value)
            return
        except BaseException:  # hot.serve answers every Exception; a cancellation ends here
            self.node_state.admission.leave()
            self._respond(cycle, hot.internal_error())
            coro.close()
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0)): on at the next loop turn
            self.loop.call_soon(self._step, cycle, coro)
            return
        # The coroutine yielded its future to us, not to a Task: clear the flag a Task would
        # clear, or the future refuses to be awaited again.
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(partial(self._step, cycle, coro))

    async def _finish(self, cycle: HotCycle, coro: Coroutine[Any, Any, ops.Reply]) -> None:
        try:
            reply = await coro
        finally:
            self.node_state.admission.leave()
        self._respond(cycle, reply)

    async def _queued(self, cycle: HotCycle, waiter: Any) -> None:
        """A request that waited in the admission queue: run it once its slot is free."""
        state = self.node_state
        await state.admission.wait(waiter)
        body = b"".join(cycle.body) if cycle.body else b""
        coro = hot.serve(
            state, cycle.route, cycle.method, cycle.raw_path, cycle.query, body, cycle.credentials
        )
        await self._finish(cycle, coro)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.cycle, HotCycle):
            # (A request waiting for admission still runs, with its body: only the count goes.)
            self._release(self.cycle)
        super().connection_lost(exc)

    def _release(self, cycle: HotCycle) -> None:
        """The body stops counting against max_buffered_body_bytes."""
        self.node_state.connections.http_buffered_bytes -= cycle.held
        cycle.held = 0

    def _respond(self, cycle: HotCycle, reply: ops.Reply) -> None:
        # Served or refused: the body is not needed any more.
        self._release(cycle)
        cycle.body = []
        cycle.response_complete = True
        self.node_state.stats.observe(
            cycle.method, cycle.route, reply.status, time.perf_counter() - cycle.started
        )
        if self.transport.is_closing():
            return
        self.write_reply(reply, cycle.keep_alive, cycle.method == "HEAD")
        if not cycle.keep_alive and cycle.received:
            # (A refusal answered before its body arrived closes once the body is read: closing
            # on unread data would reset the connection under the client's feet.)
            self.transport.close()
        self.on_response_complete()


def wire_protocol(state: NodeState) -> type[WireProtocol]:
    """The protocol class to give uvicorn (`http=`), bound to this node's state. With
    `fast_path` off every request takes the ASGI path; the connection limits hold either way."""
    return type(
        "LimeWireProtocol",
        (WireProtocol,),
        {"node_state": state, "serve_hot": state.config.fast_path},
    )
