"""The fake's stand-in for S3 presigned URLs (plain Python, thread-safe).

`put` stores bytes and returns an S3-looking path + query (`/_fake/files/<token>/<name>?X-Amz-...`)
the backend prefixes with its public address; `get` answers like S3 would: unknown key, or
expired once the injectable clock passes the expiry.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable

from .models import StoredFile

URL_EXPIRES_S = 180
UPLOAD_EXPIRES_S = 600  # bulk patient create upload URL: 10 minutes (patient-import/create.ts)
FILES_PREFIX = "/_fake/files"
UPLOADS_PREFIX = "/_fake/uploads"


class NoSuchKey(LookupError):
    """S3 `NoSuchKey`: the token was never issued (or the fake was reset)."""


class RequestExpired(PermissionError):
    """S3 `AccessDenied` / "Request has expired"."""


class FileStore:
    def __init__(self, clock: Callable[[], float], on_put: Callable[[str, StoredFile], None] | None = None):
        self._clock = clock
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)  # signs the X-Amz-Signature of this process's URLs
        self._files: dict[str, StoredFile] = {}
        self.on_put = on_put  # persistence hook (persist.py): called with each new file

    def load(self, token: str, f: StoredFile) -> None:
        """Put back a file stored by an earlier run (its URL and expiry unchanged)."""
        with self._lock:
            self._files[token] = f

    def put(
        self,
        content: bytes | Callable[[], bytes],
        content_type: str,
        name: str,
        *,
        expires_s: int = URL_EXPIRES_S,
        expired: bool = False,
    ) -> str:
        """Store `content` (or a function making it on first read); returns its presigned path (born expired
        if `expired`)."""
        now = self._clock()
        token = secrets.token_urlsafe(18)
        if callable(content):
            stored = StoredFile(b"", content_type, now - 1 if expired else now + expires_s, name, make=content)
        else:
            stored = StoredFile(content, content_type, now - 1 if expired else now + expires_s, name)
        with self._lock:
            self._files[token] = stored
        if self.on_put:
            self.on_put(token, stored)
        amz_date = _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        sig = hmac.new(self._secret, f"{token}/{name}/{amz_date}".encode(), hashlib.sha256).hexdigest()
        return (
            f"{FILES_PREFIX}/{token}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=FAKEKEY%2F{amz_date[:8]}%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date={amz_date}"
            f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
        )

    def get(self, token: str) -> StoredFile:
        """Raises `NoSuchKey` or `RequestExpired`."""
        with self._lock:
            f = self._files.get(token)
        if f is None:
            raise NoSuchKey("The specified key does not exist.")
        if f.expired(self._clock()):
            raise RequestExpired("Request has expired")
        return f

    def upload_url(self, token: str, name: str, *, expires_s: int = UPLOAD_EXPIRES_S, expired: bool = False) -> str:
        """A presigned PUT path for an upload slot the caller keeps (`/_fake/uploads/<token>/<name>?X-Amz-...`);
        its expiry is the caller's to check (`expires_at`)."""
        now = self._clock()
        amz_date = _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        sig = hmac.new(self._secret, f"PUT/{token}/{name}/{amz_date}".encode(), hashlib.sha256).hexdigest()
        return (
            f"{UPLOADS_PREFIX}/{token}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=FAKEKEY%2F{amz_date[:8]}%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date={amz_date}"
            f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
        )

    def count(self) -> int:
        with self._lock:
            return len(self._files)

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
