"""hashed_api_key never carries a raw credential (DESIGN invariant 6)."""

from __future__ import annotations

import hashlib

import pytest

from producer.events import is_hashed_key, normalize_api_key


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.mark.parametrize(
    ("value", "alias", "expected"),
    [
        ("sk-live-1234567890", None, sha("sk-live-1234567890")),  # LiteLLM's own token hash
        ("Bearer sk-live-1234567890", None, sha("sk-live-1234567890")),
        ("Bearer some-opaque-token", None, sha("some-opaque-token")),
        ("custom-auth-secret", None, sha("custom-auth-secret")),
        (sha("sk-x"), None, sha("sk-x")),  # already a hash: kept
        ("hashed-jwt-" + sha("jwt"), None, "hashed-jwt-" + sha("jwt")),
        ("litellm_proxy_master_key", None, "litellm_proxy_master_key"),  # LiteLLM's alias for the master key
        ("my-session-alias", "my-session-alias", "my-session-alias"),  # session tokens log their alias
        (None, None, None),
        ("", None, ""),
    ],
)
def test_normalize_api_key(value: str | None, alias: str | None, expected: str | None) -> None:
    assert normalize_api_key(value, alias) == expected


def test_is_hashed_key() -> None:
    assert is_hashed_key(sha("a"))
    assert not is_hashed_key(sha("a")[:63])
    assert not is_hashed_key("z" * 64)
    assert not is_hashed_key("sk-" + "a" * 61)
