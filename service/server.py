"""The HTTP server: uvicorn, with an HTTP protocol that guards its connections.

uvicorn alone keeps a connection open for ever while its request head has not arrived (it has
no header read timeout), and its connection limit counts such idle sockets: a few hundred of
them, from one address, get every other client a plain-text 503. ``guarded_protocol`` makes
uvicorn's h11 protocol

- close a connection whose request head has not all arrived within ``header_timeout_s`` of
  its opening or of the previous response (408 when part of a head came), or whose client
  still sends a body ``header_timeout_s`` after it was answered (an early 413);
- take at most ``max_client_connections`` connections from one address (429 past it) and
  ``max_connections`` in all (503 past it);
- answer these, and malformed requests, in the API's JSON error format.

Refusals are written at once and the connection is closed after a short linger that drains
what the client sent, so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import http
import json
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import ServiceSettings

LINGER_S = 2.0  # how long a refused connection is drained before it is closed
SPARE_FILES = 256  # file descriptors beyond the connections (model, index, logs, threads)


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    detail: str


class ConnectionGuard:
    """Open connections, in all and by client address (one server's protocols share it;
    only the event loop's thread touches it)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self.open = 0
        self.by_client: Counter[str] = Counter()

    def admit(self, client: str) -> Refusal | None:
        """Count a new connection in, or say why it is refused."""
        if self.open >= self.total:
            return Refusal(
                503,
                "too_many_connections",
                f"the server has its {self.total} connections open; retry shortly",
            )
        if self.by_client[client] >= self.per_client:
            return Refusal(
                429,
                "too_many_connections",
                f"{self.per_client} connections from this address are open already; reuse "
                "them, or close some",
            )
        self.open += 1
        self.by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and connection limits (module
    docstring); ``guarded_protocol`` makes one with the settings' limits."""

    guard: ClassVar[ConnectionGuard]
    header_timeout_s: ClassVar[float]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else ""
        self._head_timer: asyncio.TimerHandle | None = None
        self._draining = False
        refusal = self.guard.admit(self._peer)
        self._admitted = refusal is None
        if refusal is not None:
            retry = {"retry-after": "1"}
            self._answer_and_close(refusal.status, refusal.code, refusal.detail, retry)
            return
        self._time_the_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._admitted:
            self._admitted = False
            self.guard.release(self._peer)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:  # a refused or timed-out connection: read and dropped
            return
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        self._time_the_client()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._time_the_client()

    def send_400_response(self, msg: str) -> None:
        detail = "the request is not valid HTTP/1.1 (or its head is too large)"
        self._answer_and_close(400, "malformed_request", detail)

    def _waits_on_the_client(self) -> bool:
        """Whether only the client can move on: a request head to come, or the rest of a
        body already answered (the app bounds a body it reads: SBIR_BODY_TIMEOUT_S)."""
        if self.transport.is_closing() or self._draining:
            return False
        their, ours = self.conn.their_state, self.conn.our_state
        return their is h11.IDLE or (their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

    def _time_the_client(self) -> None:
        """Run the head timer while the connection waits on the client, from the moment it
        starts waiting (data arriving meanwhile does not extend it)."""
        if self._waits_on_the_client():
            if self._head_timer is None:
                delay = self.header_timeout_s
                self._head_timer = self.loop.call_later(delay, self._head_timed_out)
        else:
            self._stop_head_timer()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waits_on_the_client():
            return
        if self.conn.their_state is not h11.IDLE or not self.conn.trailing_data[0]:
            self.transport.close()  # idle, or the rest of a body answered already
            return
        detail = f"the request head did not arrive within {self.header_timeout_s:g} s"
        self._answer_and_close(408, "request_timeout", detail)

    def _answer_and_close(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        """Write a JSON error and close the connection once the client has had time to
        read it (what it sends meanwhile is drained, so closing sends no reset)."""
        self._stop_head_timer()
        self._draining = True
        body = json.dumps({"error": code, "detail": detail}).encode()
        lines = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)


def guarded_protocol(settings: ServiceSettings) -> type[GuardedH11Protocol]:
    """A ``GuardedH11Protocol`` class with the settings' limits and its own counts, for
    uvicorn's ``http=``."""
    attributes: dict[str, Any] = {
        "guard": ConnectionGuard(settings.max_connections, settings.max_client_connections),
        "header_timeout_s": settings.header_timeout_s,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)


def raise_file_limit(connections: int) -> None:
    """Raise the process's open-file limit towards ``connections`` plus spares (up to the
    hard limit), so that the connection limit, not the OS, turns clients away."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
