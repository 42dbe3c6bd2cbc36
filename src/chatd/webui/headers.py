"""Security headers for the page and its files.

Model output is untrusted: the page renders it through a sanitiser, and this policy is
the second wall. Scripts and connections only to this origin (a smuggled script could
neither load code nor send a conversation elsewhere), no plugins, no framing, and no
inline script or style attributes at all.
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",   # data:/blob: for attached images only
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",           # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
}
