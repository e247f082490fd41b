from __future__ import annotations

from gateway.auth.keys import (
    bearer_token,
    digest,
    generate_admin_key,
    generate_tenant_key,
    public_id_of,
    same_digest,
)


def test_tenant_key_format_and_lookup_prefix() -> None:
    new = generate_tenant_key()
    assert new.key.startswith("sk-tg-") and len(new.key) == 6 + 12 + 1 + 40
    assert public_id_of(new.key) == new.public_id
    assert same_digest(digest(new.key), new.digest)
    assert generate_tenant_key().key != new.key


def test_malformed_keys_have_no_lookup_prefix() -> None:
    new = generate_tenant_key()
    for bad in ("", "sk-tg-", new.key[:-1], new.key + "x", new.key.replace("sk-tg-", "sk-xx-"), "sk-tg-' OR 1=1 --",
                generate_admin_key().key):
        assert public_id_of(bad) is None


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Bearer", "Basic abc", "Bearer "):
        assert bearer_token(bad) is None
