"""Access tokens at rest and in logs: Fernet with rotation, clear errors, no token in clear."""

from __future__ import annotations

import string
from typing import Any

import fakeredis
import pytest
from cryptography.fernet import Fernet
from hypothesis import given, settings
from hypothesis import strategies as st

from config.logging import REDACTED, redact_secrets
from config.settings import load_settings
from worker.models import Destination
from worker.secrets import SecretsError, TokenBox, new_key
from worker.store import Store

TOKEN = "act.b8f0c2a1d9e74f6a8c3b5d7e9f1a2b3c"
tokens = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=16, max_size=200)


def every_value(r: Any) -> list[bytes]:
    """Every key and value Redis holds, whatever its type (as raw bytes)."""
    out = []
    for key in r.scan_iter():
        out.append(key)
        kind = r.type(key).decode()
        if kind == "string":
            out.append(r.get(key))
        elif kind == "hash":
            for field, value in r.hgetall(key).items():
                out += [field, value]
        elif kind == "list":
            out += r.lrange(key, 0, -1)
        elif kind == "set":
            out += list(r.smembers(key))
        elif kind == "zset":
            out += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
    return out


@given(tokens)
@settings(max_examples=60, deadline=None)
def test_any_token_round_trips_and_never_shows_in_the_ciphertext(token: str) -> None:
    box = TokenBox(new_key())
    blob = box.encrypt(token)
    assert token not in blob
    assert box.decrypt(blob) == token
    assert box.encrypt(token) != blob  # a fresh IV every time: equal tokens do not look equal


def test_rotation_new_key_first_old_key_still_decrypts() -> None:
    old, new = new_key(), new_key()
    stored = TokenBox(old).encrypt(TOKEN)
    rotated = TokenBox(f"{new}, {old}")
    assert rotated.decrypt(stored) == TOKEN
    again = rotated.encrypt(TOKEN)  # re-saved tokens move to the new key
    assert TokenBox(new).decrypt(again) == TOKEN
    with pytest.raises(SecretsError):
        TokenBox(old).decrypt(again)


def test_wrong_missing_or_malformed_key_says_what_to_do_and_not_the_token() -> None:
    stored = TokenBox(new_key()).encrypt(TOKEN)
    with pytest.raises(SecretsError, match="TOKEN_ENCRYPTION_KEY differs") as wrong:
        TokenBox(new_key()).decrypt(stored)
    assert TOKEN not in str(wrong.value)
    with pytest.raises(SecretsError, match="TOKEN_ENCRYPTION_KEY is not set"):
        TokenBox(" , ")
    with pytest.raises(SecretsError, match="not a valid Fernet key"):
        TokenBox("not-a-key")
    assert Fernet(new_key().encode())  # keygen output is a usable key


def test_a_decrypted_token_is_scrubbed_from_any_log_event() -> None:
    box = TokenBox(new_key())
    token = box.decrypt(box.encrypt("tok-" + "9" * 24))
    event = {
        "event": f"request failed for {token}",
        "headers": {"Access-Token": token, "Content-Type": "application/json"},
        "args": [f"Bearer {token}", ("x", token)],
        "access_token": "whatever",
    }
    out = redact_secrets(None, "info", event)
    assert token not in repr(out)
    assert out["headers"]["Access-Token"] == REDACTED
    assert out["access_token"] == REDACTED
    assert out["headers"]["Content-Type"] == "application/json"
    assert out["event"] == f"request failed for {REDACTED}"


def test_store_keeps_only_ciphertext_and_gives_the_token_back() -> None:
    settings_ = load_settings(token_encryption_key=new_key())
    store = Store(fakeredis.FakeRedis(), settings_)
    dest = Destination(id="acme", name="Acme", advertiser_id="7000000001")
    store.save_destination(dest, TOKEN)
    assert store.token("acme") == TOKEN
    store.set_destination_status("acme", "auth_failed", "refused")  # re-saves the record only
    rotated = "act." + "f" * 32
    store.save_destination(store.require_destination("acme"), rotated)
    assert store.token("acme") == rotated
    stored = b"\n".join(every_value(store.r))
    for secret in (TOKEN, rotated):
        assert secret.encode() not in stored
    assert b"token" in stored  # the encrypted field is there, under its name


def test_a_store_with_another_key_cannot_read_tokens() -> None:
    r = fakeredis.FakeRedis()
    Store(r, load_settings(token_encryption_key=new_key())).save_destination(
        Destination(id="acme", name="Acme", advertiser_id="7000000001"), TOKEN
    )
    with pytest.raises(SecretsError):
        Store(r, load_settings(token_encryption_key=new_key())).token("acme")
