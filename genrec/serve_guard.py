"""The service's request guard (ASGI middleware, :class:`BodyGuard`): the size, type, encoding and
arrival time of a POST body are checked before any parsing, with a JSON error of the service's form
(:mod:`genrec.serve` adds it to its app)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

__all__ = ["BodyGuard", "BODY_PATHS", "route_path"]


class _TooLarge(Exception):
    """A request body that grew past the limit while being read."""


#: the paths whose POST requests carry a JSON body (:class:`BodyGuard` checks them)
BODY_PATHS = frozenset({"/recommend", "/recommend/batch"})


def route_path(scope: dict) -> str:
    """The path the app routes on: without the ``root_path`` a server (``--root-path``) or a parent app
    (mounted under a prefix) puts in front of it, and without a trailing slash."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    # a whole segment only, as Starlette's routing strips it ("/rec" is no prefix of "/recommend")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root):]
    return path.rstrip("/") or "/"


class BodyGuard:
    """ASGI middleware: reads a request's body up front, answering 413 when its ``Content-Length``
    or the bytes actually received exceed ``max_bytes``, 415 for a non-JSON ``Content-Type`` of a
    body, and 408 when the body does not arrive within ``timeout`` seconds (a stalled client must
    not hold a connection forever); otherwise replays the body to the app."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # only the endpoints that read a body: another method or path gets the router's 405 / 404 (it got a
        # 415 or 413 for a body it would never read)
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in BODY_PATHS:
            return await self.app(scope, receive, send)
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        headers = dict(raw)
        for name in ("content-type", "content-length"):  # FastAPI reads the first of repeated ones, this the last
            if sum(k == name for k, _ in raw) > 1:
                return await self._reply(send, 400, f"repeated {name.title()} header; send one")
        length = headers.get("content-length")
        if length is not None:
            if not re.fullmatch(r"[0-9]+", length.strip()):  # str.isdigit() takes "²", which int() refuses
                return await self._reply(send, 400, f"bad Content-Length header {length!r}")
            if int(length) > self.max_bytes:
                return await self._reply(send, 413, f"request body of {int(length)} bytes is over the limit of "
                                                    f"{self.max_bytes} bytes")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):  # a gzip body read as JSON was a misleading "malformed JSON"
            return await self._reply(send, 415, f"Content-Encoding {encoding!r} is not supported; send the JSON "
                                                f"body uncompressed")
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            return await self._reply(send, 415, f"Content-Type must be application/json, got {ctype!r}")
        if not ctype:  # no (or an empty) Content-Type: read the body as JSON (FastAPI would not parse it at all)
            kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
        async def read() -> bytes | None:  # None: the client left (nobody to answer)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    raise _TooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read(), self.timeout)
        except _TooLarge:
            return await self._reply(send, 413, f"request body over the limit of {self.max_bytes} bytes")
        except asyncio.TimeoutError:
            return await self._reply(send, 408, f"request body not received within {self.timeout:g} s")
        if body is None:
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    @staticmethod
    async def _reply(send: Any, status: int, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
