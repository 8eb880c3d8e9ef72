"""Building the key ring from the settings, generating a key for the embedded default.

The embedded SQLite default should work with no configuration at all, yet
still never store secrets in plaintext; so when no key is configured there,
a random key is generated once and kept in a file beside the database (to
be backed up with it).  A PostgreSQL deployment is shared and long-lived, so
a key silently generated on one replica would be a trap: there the caller
passes ``allow_generate=False`` and the server refuses to store secrets until
``ENGRAM_ENCRYPTION_KEY`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from engram.config.settings import Settings
from engram.secrets.cipher import KeyRing, MasterKey

logger = logging.getLogger(__name__)

GENERATED_KEY_BYTES = 32


class KeySource(enum.StrEnum):
    """Where the current key came from, so startup can say so in its log."""

    ENVIRONMENT = "environment"
    FILE = "file"
    GENERATED = "generated"
    NONE = "none"


def load_keyring(settings: Settings, *, allow_generate: bool) -> tuple[KeyRing, KeySource]:
    """The key ring the settings describe, and where its current key came from.

    Precedence: ``ENGRAM_ENCRYPTION_KEY``; then an existing key file at
    ``settings.resolved_encryption_key_file``; then, only when
    ``allow_generate`` (the embedded SQLite default), a new random key written
    to that file with mode 0600.  Otherwise the ring has no current key and
    storing a secret raises ``EncryptionKeyMissingError``.  Keys in
    ``ENGRAM_ENCRYPTION_KEYS_PREVIOUS`` are added for reading in every case.

    Each configured key costs one scrypt derivation here; nothing later does.
    """
    previous = [
        MasterKey.from_passphrase(key.get_secret_value())
        for key in settings.encryption_keys_previous
        if key.get_secret_value()
    ]
    configured = settings.encryption_key.get_secret_value() if settings.encryption_key else ""
    if configured:
        return KeyRing(MasterKey.from_passphrase(configured), previous), KeySource.ENVIRONMENT
    path = settings.resolved_encryption_key_file
    if path.exists():
        return KeyRing(MasterKey.from_passphrase(_read_key_file(path)), previous), KeySource.FILE
    if allow_generate:
        token = _generate_key_file(path)
        return KeyRing(MasterKey.from_passphrase(token), previous), KeySource.GENERATED
    return KeyRing(None, previous), KeySource.NONE


def _read_key_file(path: Path) -> str:
    """The key stored in ``path``; warns when other users could read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning(
            "the encryption key file %s can be read by other users (mode %03o); "
            "restrict it with chmod 600",
            path,
            mode,
        )
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(
            f"the encryption key file {path} is empty; restore it from a backup, "
            "or set ENGRAM_ENCRYPTION_KEY"
        )
    return token


def _generate_key_file(path: Path) -> str:
    """Create ``path`` holding a fresh random key, readable by this user only.

    The key is written and flushed to disk under a temporary name, then
    hard-linked into place: the link either creates the complete file or fails
    because the file exists, so a concurrent starter never reads a half-written
    key, and whichever process lost the race adopts the winner's key.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    token = base64.urlsafe_b64encode(secrets.token_bytes(GENERATED_KEY_BYTES))
    text = token.decode("ascii").rstrip("=")
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".engram-key-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
    finally:
        os.unlink(temporary)
    _fsync_directory(path.parent)
    return text


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable, so a crash cannot lose the key file."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the file itself is already synced.
        with contextlib.suppress(OSError):
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
