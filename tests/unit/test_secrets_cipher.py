"""The secrets cipher and key ring: format, integrity, binding, rotation and key loading."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from engram.config.settings import Settings
from engram.secrets import (
    EncryptionKeyMissingError,
    KeyRing,
    KeySource,
    MasterKey,
    SecretContext,
    SecretDecryptionError,
    SecretsError,
    UnknownEncryptionKeyError,
    load_keyring,
)
from engram.secrets.cipher import NONCE_BYTES, SALT_BYTES, TAG_BYTES

# Derived once for the module: each passphrase costs one scrypt run per process.
OLD = MasterKey.from_passphrase("correct horse battery staple")
NEW = MasterKey.from_passphrase("a-completely-different-key")
CONTEXT = SecretContext(table="providers", column="api_key_enc", row_id="provider-1")
STORED = re.compile(r"engram:v1:([0-9a-f]{16}):([A-Za-z0-9_-]+)")


def decode_body(stored: str) -> bytes:
    payload = stored.rsplit(":", 1)[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


def encode_body(prefix_of: str, raw: bytes) -> str:
    prefix = prefix_of.rsplit(":", 1)[0]
    return f"{prefix}:{base64.urlsafe_b64encode(raw).rstrip(b'=').decode('ascii')}"


# --- round trip and format ------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    ["sk-live-1234567890", "", "clé secrète ✓ 鍵 🔑", "x" * 10_000, "line\nbreak:colon"],
)
def test_round_trip(plaintext: str) -> None:
    ring = KeyRing(current=NEW)
    stored = ring.encrypt(plaintext, CONTEXT)
    assert ring.decrypt(stored, CONTEXT) == plaintext


def test_stored_format_has_version_prefix_key_id_and_unpadded_base64url() -> None:
    ring = KeyRing(current=NEW)
    stored = ring.encrypt("sk-live-123", CONTEXT)
    match = STORED.fullmatch(stored)
    assert match is not None, stored
    assert match.group(1) == NEW.key_id == ring.current_key_id
    assert "=" not in stored
    assert "sk-live" not in stored
    # salt || nonce || ciphertext || tag, the ciphertext as long as the UTF-8 plaintext
    assert len(decode_body(stored)) == SALT_BYTES + NONCE_BYTES + len(b"sk-live-123") + TAG_BYTES
    assert ring.is_encrypted(stored)


def test_two_encryptions_of_the_same_value_differ() -> None:
    ring = KeyRing(current=NEW)
    first, second = ring.encrypt("same", CONTEXT), ring.encrypt("same", CONTEXT)
    assert first != second
    assert decode_body(first)[:SALT_BYTES] != decode_body(second)[:SALT_BYTES]
    assert ring.decrypt(first, CONTEXT) == ring.decrypt(second, CONTEXT) == "same"


def test_key_id_is_stable_distinct_and_not_the_key() -> None:
    assert MasterKey.from_passphrase("correct horse battery staple").key_id == OLD.key_id
    assert OLD.key_id != NEW.key_id
    assert re.fullmatch(r"[0-9a-f]{16}", OLD.key_id)


def test_empty_passphrase_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        MasterKey.from_passphrase("")


# --- integrity ---------------------------------------------------------------------------


def test_wrong_key_fails() -> None:
    stored = KeyRing(current=OLD).encrypt("secret", CONTEXT)
    # Pretend the other key has the same id, so the cipher itself must notice.
    forged = stored.replace(OLD.key_id, NEW.key_id)
    with pytest.raises(SecretDecryptionError):
        KeyRing(current=NEW).decrypt(forged, CONTEXT)


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(0, id="salt"),
        pytest.param(SALT_BYTES, id="nonce"),
        pytest.param(SALT_BYTES + NONCE_BYTES, id="body"),
        pytest.param(-1, id="tag"),
    ],
)
def test_a_flipped_byte_anywhere_fails(offset: int) -> None:
    ring = KeyRing(current=NEW)
    stored = ring.encrypt("sk-live-123", CONTEXT)
    raw = bytearray(decode_body(stored))
    raw[offset] ^= 0x01
    with pytest.raises(SecretDecryptionError) as caught:
        ring.decrypt(encode_body(stored, bytes(raw)), CONTEXT)
    assert "sk-live" not in str(caught.value)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: s[:-40], id="truncated"),
        pytest.param(lambda s: s[: s.rindex(":") + 1] + "AAAA", id="too-short"),
        pytest.param(lambda s: s + "!", id="not-base64url"),
        pytest.param(lambda s: s.replace(":v1:", ":v9:"), id="unknown-version"),
        pytest.param(lambda s: s.rsplit(":", 1)[0], id="missing-payload"),
    ],
)
def test_malformed_values_fail_cleanly(mangle: Callable[[str], str]) -> None:
    ring = KeyRing(current=NEW)
    stored = ring.encrypt("sk-live-123", CONTEXT)
    with pytest.raises(SecretDecryptionError):
        ring.decrypt(mangle(stored), CONTEXT)


@pytest.mark.parametrize(
    "elsewhere",
    [
        pytest.param(SecretContext("providers", "api_key_enc", "provider-2"), id="row"),
        pytest.param(SecretContext("providers", "access_key_enc", "provider-1"), id="column"),
        pytest.param(SecretContext("agent_environment_variables", "api_key_enc", "provider-1")),
    ],
)
def test_a_moved_ciphertext_fails(elsewhere: SecretContext) -> None:
    ring = KeyRing(current=NEW)
    stored = ring.encrypt("sk-live-123", CONTEXT)
    with pytest.raises(SecretDecryptionError):
        ring.decrypt(stored, elsewhere)


def test_aad_is_unambiguous() -> None:
    assert SecretContext("a:b", "c", "d").aad() != SecretContext("a", "b:c", "d").aad()
    assert SecretContext("ab", "", "c").aad() != SecretContext("a", "b", "c").aad()


def test_context_fields_must_be_strings() -> None:
    with pytest.raises(TypeError, match="row_id"):
        SecretContext("providers", "api_key_enc", 42)  # type: ignore[arg-type]


# --- key ids and rotation -----------------------------------------------------------


def test_unknown_key_id_names_it_and_the_variable() -> None:
    stored = KeyRing(current=OLD).encrypt("secret", CONTEXT)
    with pytest.raises(UnknownEncryptionKeyError) as caught:
        KeyRing(current=NEW).decrypt(stored, CONTEXT)
    assert caught.value.key_id == OLD.key_id
    assert OLD.key_id in str(caught.value)
    assert "ENGRAM_ENCRYPTION_KEYS_PREVIOUS" in str(caught.value)
    assert caught.value.reason == "ENCRYPTION_KEY_UNKNOWN"


def test_rotation_reads_old_values_and_rewrites_them_under_the_new_key() -> None:
    stored = KeyRing(current=OLD).encrypt("sk-live-123", CONTEXT)
    ring = KeyRing(current=NEW, previous=[OLD])
    assert ring.decrypt(stored, CONTEXT) == "sk-live-123"
    assert ring.needs_rewrite(stored)
    rewritten = ring.encrypt(ring.decrypt(stored, CONTEXT), CONTEXT)
    assert rewritten.split(":")[2] == NEW.key_id
    assert not ring.needs_rewrite(rewritten)
    assert ring.decrypt(rewritten, CONTEXT) == "sk-live-123"


def test_needs_rewrite_never_raises_on_odd_values() -> None:
    ring = KeyRing(current=NEW)
    assert ring.needs_rewrite("engram:garbage")
    assert ring.needs_rewrite("engram:v9:0123456789abcdef:AAAA")


def test_without_a_current_key_every_encrypted_value_needs_rewriting() -> None:
    stored = KeyRing(current=OLD).encrypt("secret", CONTEXT)
    ring = KeyRing(current=None, previous=[OLD])
    assert ring.current_key_id is None
    assert ring.decrypt(stored, CONTEXT) == "secret"
    assert ring.needs_rewrite(stored)


# --- legacy plaintext and the missing key ---------------------------------------------


def test_legacy_plaintext_is_read_as_is_and_needs_rewriting() -> None:
    ring = KeyRing(current=NEW)
    assert not ring.is_encrypted("sk-legacy-plain")
    assert ring.decrypt("sk-legacy-plain", CONTEXT) == "sk-legacy-plain"
    assert ring.needs_rewrite("sk-legacy-plain")
    # Dual read works without any key, too.
    assert KeyRing(current=None).decrypt("sk-legacy-plain", CONTEXT) == "sk-legacy-plain"


def test_encrypting_without_a_key_refuses_and_names_the_variable() -> None:
    ring = KeyRing(current=None)
    with pytest.raises(EncryptionKeyMissingError) as caught:
        ring.encrypt("sk-live-123", CONTEXT)
    message = str(caught.value)
    assert "ENGRAM_ENCRYPTION_KEY" in message
    assert "LETTA_ENCRYPTION_KEY" in message
    assert "plaintext" in message
    assert caught.value.reason == "ENCRYPTION_KEY_MISSING"


def test_errors_share_a_base_and_have_stable_reasons() -> None:
    for error in (EncryptionKeyMissingError, UnknownEncryptionKeyError, SecretDecryptionError):
        assert issubclass(error, SecretsError)
    assert SecretDecryptionError.reason == "SECRET_DECRYPTION_FAILED"


def test_repr_does_not_leak_key_material() -> None:
    passphrase = "hunter2-is-not-a-good-key"
    key = MasterKey.from_passphrase(passphrase)
    root = key._root
    ring = KeyRing(current=key, previous=[OLD])
    for text in (repr(key), repr(ring), str(key), str(ring)):
        assert passphrase not in text
        assert root.hex() not in text
        assert base64.urlsafe_b64encode(root).decode().rstrip("=") not in text
        assert key.key_id in text


# --- loading the key ring from settings ------------------------------------------------


def test_environment_key_is_used(tmp_path: Path) -> None:
    settings = Settings(
        encryption_key="correct horse battery staple", sqlite_path=tmp_path / "e.db"
    )
    ring, source = load_keyring(settings, allow_generate=True)
    assert source is KeySource.ENVIRONMENT
    assert ring.current_key_id == OLD.key_id
    assert not settings.resolved_encryption_key_file.exists()


def test_no_key_and_no_generation_gives_a_ring_that_refuses(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=tmp_path / "e.db")
    ring, source = load_keyring(settings, allow_generate=False)
    assert source is KeySource.NONE
    assert ring.current_key_id is None
    assert not settings.resolved_encryption_key_file.exists()
    with pytest.raises(EncryptionKeyMissingError):
        ring.encrypt("x", CONTEXT)


def test_generated_key_file_is_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=tmp_path / "data" / "e.db")
    ring, source = load_keyring(settings, allow_generate=True)
    assert source is KeySource.GENERATED
    path = settings.resolved_encryption_key_file
    assert path == tmp_path / "data" / "encryption.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == 32
    assert [p.name for p in path.parent.iterdir()] == ["encryption.key"]  # no temporary left

    stored = ring.encrypt("sk-live-123", CONTEXT)
    again, source_again = load_keyring(settings, allow_generate=True)
    assert source_again is KeySource.FILE
    assert again.current_key_id == ring.current_key_id
    assert again.decrypt(stored, CONTEXT) == "sk-live-123"


def test_an_existing_key_file_is_used_even_without_generation(tmp_path: Path) -> None:
    settings = Settings(sqlite_path=tmp_path / "e.db", encryption_key_file=tmp_path / "k")
    (tmp_path / "k").write_text("correct horse battery staple\n")
    os.chmod(tmp_path / "k", 0o600)
    ring, source = load_keyring(settings, allow_generate=False)
    assert source is KeySource.FILE
    assert ring.current_key_id == OLD.key_id


def test_environment_key_wins_over_the_file(tmp_path: Path) -> None:
    load_keyring(Settings(sqlite_path=tmp_path / "e.db"), allow_generate=True)
    settings = Settings(encryption_key="a-completely-different-key", sqlite_path=tmp_path / "e.db")
    ring, source = load_keyring(settings, allow_generate=True)
    assert source is KeySource.ENVIRONMENT
    assert ring.current_key_id == NEW.key_id


def test_a_readable_key_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "encryption.key"
    path.write_text("correct horse battery staple\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="engram.secrets.keyring"):
        _, source = load_keyring(Settings(sqlite_path=tmp_path / "e.db"), allow_generate=True)
    assert source is KeySource.FILE
    assert any("644" in record.getMessage() for record in caplog.records)
    assert all("correct horse" not in record.getMessage() for record in caplog.records)


def test_an_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "encryption.key").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_keyring(Settings(sqlite_path=tmp_path / "e.db"), allow_generate=True)


def test_previous_keys_come_from_the_settings(tmp_path: Path) -> None:
    stored = KeyRing(current=OLD).encrypt("sk-live-123", CONTEXT)
    settings = Settings(
        encryption_key="a-completely-different-key",
        encryption_keys_previous="correct horse battery staple, ",
        sqlite_path=tmp_path / "e.db",
    )
    ring, _ = load_keyring(settings, allow_generate=False)
    assert ring.known_key_ids == {OLD.key_id, NEW.key_id}
    assert ring.decrypt(stored, CONTEXT) == "sk-live-123"
    assert ring.needs_rewrite(stored)
