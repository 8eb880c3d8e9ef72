"""AES-256-GCM encryption of secrets stored in the database.

Format of a stored value::

    engram:v1:<key id>:<base64url(salt || nonce || ciphertext-with-tag)>

* The configured key is stretched once per process with scrypt into a 32-byte
  root key, so a weak passphrase still costs an attacker; the cost is paid
  once, not per value (the reference ran 100,000 PBKDF2 rounds per value).
* Each value gets a fresh 16-byte salt and 12-byte nonce; its data key is
  HKDF-SHA256(root, salt), which takes microseconds.
* The key id is a short HMAC of the root key: it tells which configured key
  decrypts a value without revealing anything about the key.
* The associated data binds the ciphertext to its table, column and row, so
  a value copied elsewhere does not decrypt.

Encrypting or decrypting a value takes tens of microseconds after the
one-time derivation (``scripts/bench-crypto``), cheap enough for the event
loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from engram.secrets.errors import (
    EncryptionKeyMissingError,
    SecretDecryptionError,
    UnknownEncryptionKeyError,
)

FORMAT_PREFIX = "engram:"
VERSION = "v1"
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
ROOT_KEY_SALT = b"engram/root-key/v1"
DATA_KEY_INFO = b"engram/secret/v1"
KEY_ID_LABEL = b"engram/key-id"
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


@functools.lru_cache(maxsize=8)
def _stretch(passphrase: str) -> bytes:
    """The scrypt root key of ``passphrase``; computed once per process per key."""
    kdf = Scrypt(salt=ROOT_KEY_SALT, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class SecretContext:
    """Where a secret is stored; it becomes the ciphertext's associated data."""

    table: str
    column: str
    row_id: str

    def aad(self) -> bytes:
        """An unambiguous encoding: each field prefixed with its length."""
        parts = [VERSION, self.table, self.column, self.row_id]
        encoded = [part.encode("utf-8") for part in parts]
        return b"".join(len(part).to_bytes(4, "big") + part for part in encoded)


class MasterKey:
    """One configured key, stretched once into the root key all values derive from."""

    __slots__ = ("_root", "key_id")

    def __init__(self, root: bytes) -> None:
        if len(root) != 32:
            raise ValueError("the root key must be 32 bytes")
        self._root = root
        self.key_id = hmac.new(root, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_passphrase(cls, passphrase: str) -> MasterKey:
        if not passphrase:
            raise ValueError("an encryption key must not be empty")
        return cls(_stretch(passphrase))

    def data_key(self, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=DATA_KEY_INFO).derive(
            self._root
        )

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"


class KeyRing:
    """The current key (for writing) and any previous keys (for reading during a rotation)."""

    def __init__(self, current: MasterKey | None, previous: Sequence[MasterKey] = ()) -> None:
        self.current = current
        self._by_id = {key.key_id: key for key in previous}
        if current is not None:
            self._by_id[current.key_id] = current

    @property
    def current_key_id(self) -> str | None:
        return self.current.key_id if self.current is not None else None

    def require_current_key(self) -> MasterKey:
        if self.current is None:
            raise EncryptionKeyMissingError()
        return self.current

    def encrypt(self, plaintext: str, context: SecretContext) -> str:
        key = self.require_current_key()
        salt = os.urandom(SALT_BYTES)
        nonce = os.urandom(NONCE_BYTES)
        body = AESGCM(key.data_key(salt)).encrypt(nonce, plaintext.encode("utf-8"), context.aad())
        payload = base64.urlsafe_b64encode(salt + nonce + body).rstrip(b"=").decode("ascii")
        return f"{FORMAT_PREFIX}{VERSION}:{key.key_id}:{payload}"

    @staticmethod
    def is_encrypted(stored: str) -> bool:
        return stored.startswith(FORMAT_PREFIX)

    def decrypt(self, stored: str, context: SecretContext) -> str:
        """The plaintext; a value without our prefix is legacy plaintext, returned as it is."""
        if not self.is_encrypted(stored):
            return stored
        key_id, payload = self._split(stored)
        key = self._by_id.get(key_id)
        if key is None:
            raise UnknownEncryptionKeyError(key_id)
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError) as error:
            raise SecretDecryptionError("the value is not valid base64") from error
        if len(raw) < SALT_BYTES + NONCE_BYTES + TAG_BYTES:
            raise SecretDecryptionError("the value is too short")
        salt, nonce = raw[:SALT_BYTES], raw[SALT_BYTES : SALT_BYTES + NONCE_BYTES]
        body = raw[SALT_BYTES + NONCE_BYTES :]
        try:
            plaintext = AESGCM(key.data_key(salt)).decrypt(nonce, body, context.aad())
        except InvalidTag as error:
            raise SecretDecryptionError() from error
        return plaintext.decode("utf-8")

    def needs_rewrite(self, stored: str) -> bool:
        """True for legacy plaintext, and for values under a key other than the current one."""
        if not self.is_encrypted(stored):
            return True
        key_id, _ = self._split(stored)
        return key_id != self.current_key_id

    @staticmethod
    def _split(stored: str) -> tuple[str, str]:
        parts = stored.split(":", 3)
        if len(parts) != 4 or parts[1] != VERSION:
            raise SecretDecryptionError("unknown secret format version")
        return parts[2], parts[3]

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current_key_id!r}, known={sorted(self._by_id)!r})"
