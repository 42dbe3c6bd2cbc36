"""Bearer-key check: constant-time comparison, keys never logged."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from chatd.api.errors import APIError


def key_hash(key: str) -> str:
    """A short, non-reversible tag that tells keys apart in logs."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyChecker:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, request: Request) -> str | None:
        """Return the caller's key hash, or raise 401. Open when no key is configured."""
        if not self._keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError.invalid_api_key(
                "You didn't provide an API key. Send it in the Authorization header as "
                "'Bearer YOUR_KEY'.")
        candidate = token.strip().encode()
        ok = False
        for key in self._keys:  # check every key: timing does not reveal which matched
            ok |= hmac.compare_digest(candidate, key)
        if not ok:
            raise APIError.invalid_api_key(
                f"Incorrect API key provided: {_redact(token.strip())}.")
        return key_hash(token.strip())


def _redact(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "*" * len(token)
