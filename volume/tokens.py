"""Bearer tokens with scopes, verifiable by any node without a shared store.

A token is `mfs1.<scope>.<random>.<mac>`: `mac` is HMAC-SHA256 over `mfs1.<scope>.<random>`
with a key derived from the volume's `secret` (`HMAC(secret, "mirrorfs token v1")`, so the key
that signs tokens is never the Raft password itself), base64url without padding. Every source
node and every region daemon reads the same config file, so each verifies a token on its own;
nothing is looked up, nothing is stored. The config's top-level `token` is accepted as `admin`
as it is (compared in constant time), so volumes written before scopes keep working.

Scopes (what a route may require, see volume/web.py):

    admin         everything
    mirror:NAME   stream the changelog, take a snapshot, read the source status,
                  ack and remove the mirror NAME only
    client:rw     metadata reads and POST /v1/ops
    client:ro     metadata reads only: it cannot mutate

Revocation is rotating the `secret` (every minted token stops verifying at once, the config's
own admin token excepted); there is no per-token revocation list. Tokens do not expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from volume.errors import BadRequestError

TOKEN_PREFIX = "mfs1"
KEY_CONTEXT = b"mirrorfs token v1"  # domain separation: this key signs tokens and nothing else
RANDOM_BYTES = 18

ADMIN = "admin"
CLIENT_RW = "client:rw"
CLIENT_RO = "client:ro"
MIRROR_PREFIX = "mirror:"
ANY_MIRROR = "mirror:*"  # a route pattern: any mirror's own token
OWN_MIRROR = "mirror:{name}"  # a route pattern: the mirror the route's {name} names
SCOPES_HELP = "admin, mirror:NAME, client:rw or client:ro"
_MIRROR_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # as `mirror create` accepts


def parse_scope(scope: str) -> str:
    """`scope` if it is one a token may carry; BadRequestError naming the choices if not."""
    if scope in (ADMIN, CLIENT_RW, CLIENT_RO):
        return scope
    if scope.startswith(MIRROR_PREFIX) and _MIRROR_NAME.match(scope.removeprefix(MIRROR_PREFIX)):
        return scope
    raise BadRequestError(f"unknown token scope {scope!r}", hint=f"use one of {SCOPES_HELP}")


def mirror_of(scope: str) -> str | None:
    """The mirror name of a `mirror:NAME` scope, else None."""
    return scope.removeprefix(MIRROR_PREFIX) if scope.startswith(MIRROR_PREFIX) else None


def token_key(secret: str) -> bytes:
    """The signing key of a volume's tokens, derived from its `secret`."""
    return hmac.new(secret.encode(), KEY_CONTEXT, hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def mint_token(key: bytes, scope: str) -> str:
    """A new token for `scope` (BadRequestError for a scope no token may carry)."""
    # token_hex: no '.' in the random part, so the four fields always split apart
    body = f"{TOKEN_PREFIX}.{parse_scope(scope)}.{secrets.token_hex(RANDOM_BYTES)}"
    return f"{body}.{_mac(key, body)}"


@dataclass(frozen=True)
class TokenVerifier:
    """Answers "which scope does this token carry?" with the volume's key and admin token."""

    key: bytes = field(repr=False)
    admin_token: str = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str, *, admin_token: str) -> TokenVerifier:
        return cls(token_key(secret), admin_token)

    def scope_of(self, token: str) -> str | None:
        """The token's scope, or None for a missing, malformed, forged or tampered token.

        Constant-time in the secret parts: the admin token and the mac are compared with
        hmac.compare_digest, so response times do not leak how much of a guess was right."""
        given = token.encode("utf-8", "replace")
        if token and hmac.compare_digest(given, self.admin_token.encode()):
            return ADMIN
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
            return None
        body = ".".join(parts[:3])
        expected = _mac(self.key, body).encode()
        if not hmac.compare_digest(parts[3].encode("utf-8", "replace"), expected):
            return None
        try:
            return parse_scope(parts[1])
        except BadRequestError:  # signed by us but a scope we no longer know: refuse
            return None
