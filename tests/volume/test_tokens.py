"""Tokens verify on their own (no store): a scope comes out only of a token signed for it."""

from __future__ import annotations

import pytest

from volume.errors import BadRequestError
from volume.tokens import TokenVerifier, mint_token, parse_scope, token_key
from volume.web import is_allowed

SECRET = "s" * 32
ADMIN_TOKEN = "the-config-admin-token-000"
VERIFIER = TokenVerifier.from_secret(SECRET, admin_token=ADMIN_TOKEN)


@pytest.mark.parametrize("scope", ["admin", "mirror:eu", "mirror:a-1", "client:rw", "client:ro"])
def test_a_minted_token_carries_its_scope(scope: str) -> None:
    token = mint_token(token_key(SECRET), scope)
    assert token.startswith(f"mfs1.{scope}.")
    assert VERIFIER.scope_of(token) == scope
    assert mint_token(token_key(SECRET), scope) != token  # each one fresh


def test_forged_tampered_or_foreign_tokens_carry_nothing() -> None:
    token = mint_token(token_key(SECRET), "client:ro")
    _, _, rand, mac = token.split(".")
    for bad in [
        "",
        "x",
        f"mfs1.admin.{rand}.{mac}",
        f"mfs1.mirror:eu.{rand}.{mac}",
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token + ".x",
        "mfs2" + token[4:],
        mint_token(token_key("another secret, not this one"), "admin"),
        ADMIN_TOKEN[:-1],
        "é" * 20,
    ]:
        assert VERIFIER.scope_of(bad) is None, bad
    assert VERIFIER.scope_of(ADMIN_TOKEN) == "admin"


def test_the_signing_key_is_not_the_raft_secret() -> None:
    assert token_key(SECRET) != SECRET.encode()
    assert len(token_key(SECRET)) == 32
    assert "s" * 8 not in repr(VERIFIER) and ADMIN_TOKEN not in repr(VERIFIER)


@pytest.mark.parametrize(
    "scope", ["root", "mirror:", "mirror:Bad_Name", "client", "client:rwx", "admin ", "mirror:*"]
)
def test_unknown_scopes_are_a_clear_error(scope: str) -> None:
    with pytest.raises(BadRequestError, match="unknown token scope") as info:
        parse_scope(scope)
    assert info.value.hint and "mirror:NAME" in info.value.hint
    with pytest.raises(BadRequestError):
        mint_token(token_key(SECRET), scope)


def test_route_patterns() -> None:
    own = {"name": "eu"}
    assert is_allowed("admin", [], own)
    assert not is_allowed("client:rw", [], own)  # undeclared: admin only
    assert is_allowed("mirror:eu", ["mirror:{name}"], own)
    assert not is_allowed("mirror:ap", ["mirror:{name}"], own)
    assert not is_allowed("mirror:eu", ["mirror:{name}"], {})
    assert is_allowed("mirror:ap", ["mirror:*"], own)
    assert not is_allowed("client:ro", ["mirror:*", "client:rw"], own)
    assert is_allowed("client:ro", ["client:rw", "client:ro"], own)
    assert is_allowed("mirror:eu", ["mirror:eu"], {})
    assert not is_allowed("mirror:e", ["mirror:eu"], {})
