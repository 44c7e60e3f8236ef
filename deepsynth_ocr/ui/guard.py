"""What keeps a local app that launches processes from being a remote-code-execution tool.

``Guard`` (ASGI middleware): an access token when one is set (required for any non-loopback bind:
``jobs.ui`` refuses to start without it), a CSRF token on every state-changing request, and a refusal
of cross-origin writes. ``RateLimit`` bounds launches and uploads. ``inside`` resolves a path under a
root and refuses anything outside it, symlinks included.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

TOKEN_COOKIE = "deepsynth_ui_token"
CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_PATHS = ("/health",)  # the container's health probe: says "ok" and nothing else


def ui_secret(state_dir: Path) -> bytes:
    """The UI's signing secret, kept in the state directory (mode 600) so tokens survive a restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "secret"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def csrf_token(secret: bytes) -> str:
    return hmac.new(secret, b"csrf", hashlib.sha256).hexdigest()


def inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it exists and, with every symlink resolved, is still under ``root``; else None."""
    if "\x00" in relative:
        return None
    root = root.resolve()
    try:
        path = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path == root or path.is_relative_to(root) else None


class RateLimit:
    """At most ``per_minute`` events in any 60 s window."""

    def __init__(self, per_minute: int):
        self.per_minute, self.events, self.lock = per_minute, collections.deque(), threading.Lock()

    def allow(self) -> bool:
        now = time.monotonic()
        with self.lock:
            while self.events and now - self.events[0] > 60:
                self.events.popleft()
            if len(self.events) >= self.per_minute:
                return False
            self.events.append(now)
            return True


async def _send_text(send, status: int, text: str, headers: list | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: access token (cookie, Bearer or a one-time ``?token=``), CSRF header, same origin."""

    def __init__(self, app, token: str, csrf: str):
        self.app, self.token, self.csrf = app, token.encode(), csrf.encode()

    def _has_token(self, headers: dict) -> bool:
        if not self.token:
            return True
        scheme, _, bearer = headers.get(b"authorization", b"").partition(b" ")
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        given = cookie[TOKEN_COOKIE].value.encode() if TOKEN_COOKIE in cookie else b""
        return hmac.compare_digest(given, self.token) or (scheme.lower() == b"bearer" and hmac.compare_digest(bearer, self.token))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.token and scope["method"] == "GET" and "token" in query:
            if not hmac.compare_digest(query["token"][0].encode(), self.token):
                return await _send_text(send, 401, "wrong token")
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{TOKEN_COOKIE}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"
            return await _send_text(send, 303, "signed in", [(b"location", location.encode()),
                                                              (b"set-cookie", cookie.encode())])
        if not self._has_token(headers) and scope["path"] not in OPEN_PATHS:
            return await _send_text(send, 401, "this UI needs its access token: open it once as /?token=TOKEN")
        if scope["method"] not in SAFE_METHODS:
            origin = headers.get(b"origin", b"").decode("latin-1")
            if origin and urlsplit(origin).netloc != headers.get(b"host", b"").decode("latin-1"):
                return await _send_text(send, 403, "cross-origin request refused")
            if not hmac.compare_digest(headers.get(CSRF_HEADER, b""), self.csrf):
                return await _send_text(send, 403, "missing or wrong CSRF token: reload the page")
        return await self.app(scope, receive, send)
