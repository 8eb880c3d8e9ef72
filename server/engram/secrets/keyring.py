"""Loading the key ring from the settings, generating a key for the embedded default."""

from __future__ import annotations

import base64
import enum
import logging
import os
import secrets
import tempfile
from pathlib import Path

from engram.config.settings import Settings
from engram.secrets.cipher import KeyRing, MasterKey

logger = logging.getLogger(__name__)


class KeySource(enum.StrEnum):
    """Where the current key came from."""

    ENVIRONMENT = "environment"
    FILE = "file"
    GENERATED = "generated"
    NONE = "none"


def load_keyring(settings: Settings, *, allow_generate: bool) -> tuple[KeyRing, KeySource]:
    """The key ring the settings describe.

    Precedence: ``ENGRAM_ENCRYPTION_KEY``, then an existing key file, then
    (only when ``allow_generate``, i.e. on the embedded SQLite default) a new
    random key written to the key file with mode 0600.  Otherwise there is no
    current key and storing a secret fails with a message naming the variable.
    """
    previous = [
        MasterKey.from_passphrase(k.get_secret_value()) for k in settings.encryption_keys_previous
    ]
    if settings.encryption_key is not None and settings.encryption_key.get_secret_value():
        current = MasterKey.from_passphrase(settings.encryption_key.get_secret_value())
        return KeyRing(current, previous), KeySource.ENVIRONMENT
    path = settings.resolved_encryption_key_file
    if path.exists():
        return KeyRing(MasterKey.from_passphrase(_read_key_file(path)), previous), KeySource.FILE
    if allow_generate:
        token = _generate_key_file(path)
        return KeyRing(MasterKey.from_passphrase(token), previous), KeySource.GENERATED
    return KeyRing(None, previous), KeySource.NONE


def _read_key_file(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning(
            "the encryption key file %s is readable by other users (mode %o); chmod 600 it",
            path,
            mode,
        )
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"the encryption key file {path} is empty")
    return token


def _generate_key_file(path: Path) -> str:
    """Write a fresh random key atomically, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        # link() fails if another process generated a key first; use theirs then.
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
    finally:
        os.unlink(temporary)
    return token
