"""Bearer-key check: constant-time comparison, keys never logged.

A key is known in logs, metrics and rate-limit buckets only by its tag, a short hash
that tells keys apart without revealing them. A successful check notes the tag on
the request's record, which is how the limits and the access log learn the caller.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from chatd.api.errors import APIError
from chatd.api.tracking import record_of


def key_hash(key: str) -> str:
    """A short, non-reversible tag that tells keys apart in logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyChecker:
    def __init__(self, keys: tuple[str, ...]) -> None:
        unique = dict.fromkeys(keys)
        self._keys = [(k.encode(), key_hash(k)) for k in unique]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def tags(self) -> list[str]:
        """The configured keys' tags, for the start-up log."""
        return [tag for _, tag in self._keys]

    def check(self, request: Request) -> str | None:
        """Return the caller's key tag, or raise 401. Open when no key is configured."""
        if not self._keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError.invalid_api_key(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Bearer YOUR_KEY'.")
        candidate = token.strip().encode()
        tag = None
        for key, key_tag in self._keys:  # compare with every key: timing reveals nothing
            if hmac.compare_digest(candidate, key):
                tag = key_tag
        if tag is None:
            raise APIError.invalid_api_key(
                f"Incorrect API key provided: {_redact(token.strip())}.")
        record_of(request).key = tag
        return tag


def _redact(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "*" * len(token)
