"""Operator tokens: stored hashed, compared in constant time.

The gateway knows only SHA-256 digests of the accepted tokens
(``GATEWAY_OPERATOR_TOKEN_SHA256``, comma-separated, so a new token can be added before
the old one is removed). A token is 256 random bits, so a plain hash is enough: there is
nothing to brute-force that a salt or a slow hash would protect.

An operator proves themselves with ``Authorization: Bearer <token>`` (scripts, curl) or,
in a browser, by entering the token once on ``/ops/login``, which sets a signed session
cookie (HttpOnly, SameSite=Strict, twelve hours) naming which digest it was issued for:
removing a digest from the setting ends its sessions too. The public registration
endpoints need no token; ``/metrics`` needs none either (see ops/README.md: Prometheus
scrapes it on the private network, and it carries no personal data).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import secrets
import sys
import time
from typing import Any

from aiohttp import web

from gateway import constants as c
from gateway.settings import Settings


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class OperatorAuth:
    def __init__(self, settings: Settings) -> None:
        self.digests = tuple(
            bytes.fromhex(d.strip()) for d in settings.operator_token_sha256.split(",") if d.strip()
        )
        self._key = hmac.new(
            settings.identity_secret.encode(), b"operator-session", hashlib.sha256
        ).digest()

    @property
    def configured(self) -> bool:
        return bool(self.digests)

    def match(self, token: str) -> bytes | None:
        """The accepted digest this token hashes to. Every digest is compared, each in
        constant time, so timing tells nothing about which or how much matched."""
        candidate = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = None
        for accepted in self.digests:
            if hmac.compare_digest(candidate, accepted):
                found = accepted
        return found

    def session(self, digest: bytes, now: float | None = None) -> str:
        expires = int((now or time.time()) + c.OPS_SESSION_TTL_S)
        return f"{expires}.{digest.hex()[:16]}.{self._sign(expires, digest)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expires = int(parts[0])
        if expires < (now or time.time()):
            return False
        ok = False
        for digest in self.digests:
            if digest.hex()[:16] == parts[1]:
                ok |= hmac.compare_digest(self._sign(expires, digest), parts[2])
        return ok

    def _sign(self, expires: int, digest: bytes) -> str:
        return hmac.new(self._key, f"{expires}.{digest.hex()}".encode(), hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return self.match(header[7:].strip()) is not None
        cookie = request.cookies.get(c.OPS_SESSION_COOKIE)
        return cookie is not None and self.session_ok(cookie)


@functools.lru_cache(maxsize=8)
def for_settings(settings: Settings) -> OperatorAuth:
    return OperatorAuth(settings)


def denied(request: web.Request, settings: Settings) -> web.Response | None:
    """None when the request carries a valid operator token or session; else the answer
    to send (401, or 403 when no operator token is configured at all)."""
    from gateway.app import error_response

    auth = for_settings(settings)
    if not auth.configured:
        return error_response(
            403,
            "operator_access_not_configured",
            "Operator access is off: set GATEWAY_OPERATOR_TOKEN_SHA256 "
            "(`gateway token` makes one).",
        )
    if auth.allows(request):
        return None
    response = error_response(401, "unauthorized", "An operator token is required.")
    response.headers["WWW-Authenticate"] = 'Bearer realm="operators"'
    return response


# -- gateway token -----------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    if args.digest:
        token = sys.stdin.readline().strip()
        if not token:
            print("give the token on standard input", file=sys.stderr)
            return 2
        print(token_digest(token))
        return 0
    token = new_token()
    digest = token_digest(token)
    print(f"token   {token}\nsha256  {digest}\n")
    print("Give the token to the operator (a password manager, not a chat); configure only")
    print("its digest, comma-separated with the others while you rotate:")
    print(f"  GATEWAY_OPERATOR_TOKEN_SHA256={digest}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("token", help="make an operator token and the digest to configure")
    p.add_argument(
        "--digest", action="store_true", help="print the digest of a token read from stdin"
    )
    p.set_defaults(func=cmd_token)
