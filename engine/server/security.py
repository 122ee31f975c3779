"""What stands between the network and the queue: HTTP basic auth on every route, a body size cap, and the
Host check that keeps a loopback server out of reach of DNS-rebinding pages. CORS stays closed unless asked.

Pure ASGI middlewares, so they cover everything the app serves: the page, the API and FastAPI's /docs.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import secrets

from starlette.exceptions import HTTPException

from sdcpu.engine.errors import UserError


def parse_credentials(text: str) -> list[tuple[str, str]]:
    """--api-auth USER:PASS[,USER2:PASS2] (A1111's format)."""
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserError("--api-auth must be USER:PASSWORD (several: U1:P1,U2:P2), with neither part empty")
        pairs.append((user, password))
    return pairs


def is_loopback(host: str) -> bool:
    """localhost, or an IP address of the loopback range (127.0.0.0/8, ::1); not names that merely start so."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class BasicAuth:
    """Every request needs one of the credentials; compared in constant time, every pair checked."""

    def __init__(self, app, credentials: list[tuple[str, str]]):
        self.app = app
        self.credentials = [(u.encode(), p.encode()) for u, p in credentials]

    def _allowed(self, header: bytes | None) -> bool:
        if not header or not header[:6].lower() == b"basic ":
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        allowed = False
        for known_user, known_password in self.credentials:
            allowed |= secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password)
        return allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._allowed(dict(scope["headers"]).get(b"authorization")):
            return await self.app(scope, receive, send)
        await _send_json(send, 401, {"error": "Unauthorized", "detail": "this server needs HTTP basic auth (--api-auth)"},
                         [(b"www-authenticate", b'Basic realm="sdcpu"')])


class BodyLimit:
    """Bodies above `limit` bytes get 413, by their Content-Length at once, or when a chunked body passes it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, {"error": "PayloadTooLarge", "detail": self._message()})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"the request body is above this server's limit of {self.limit // 2**20} MiB (--max-body-mb)"


class LoopbackHostOnly:
    """A loopback server answers only requests addressed to a loopback name (a DNS-rebinding page sends its own)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if not is_loopback(name):
                return await _send_json(send, 400, {"error": "BadHost", "detail": f"this server answers to 127.0.0.1 "
                                                    f"and localhost only (the request was for {host!r})"})
        await self.app(scope, receive, send)
