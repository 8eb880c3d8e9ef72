"""AES-256-GCM encryption of secrets stored in the database.

Format of a stored value (a text column)::

    engram:v1:<key id>:<base64url-no-padding(salt || nonce || ciphertext-with-tag)>

Why it is built this way:

* The configured key (any passphrase or random token) is stretched once per
  process with scrypt into a 32-byte root key.  A weak passphrase therefore
  still costs an attacker a memory-hard derivation per guess, while the server
  pays that cost once at startup instead of per value (the reference server
  ran 100,000 PBKDF2 rounds for every value it encrypted or decrypted).
* Each value gets a fresh random 16-byte salt and 12-byte nonce; its data key
  is HKDF-SHA256(root key, salt), which takes microseconds.  A fresh data key
  per value keeps AES-GCM far from its per-key nonce limits.
* The key id is a truncated HMAC of the root key: it says which configured key
  a value needs, so rotation can keep old keys for reading, without revealing
  anything about the key itself.
* The associated data binds a ciphertext to its table, column and row, so a
  value copied to another place fails its integrity check instead of silently
  decrypting there.
* The ``engram:v1:`` prefix lets a later format coexist with this one, and
  lets values written before encryption existed (plain text, no prefix) be
  read as they are until they are rewritten.

Encrypting or decrypting one value takes a few tens of microseconds after the
one-time derivation (measure with ``scripts/bench-crypto``): cheap enough to
call directly on the event loop, no thread pool needed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
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
ROOT_KEY_BYTES = 32
ROOT_KEY_SALT = b"engram/root-key/v1"
DATA_KEY_INFO = b"engram/secret/v1"
KEY_ID_LABEL = b"engram/key-id"
KEY_ID_HEX_CHARS = 16
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

_KEY_ID_PATTERN = re.compile(rf"[0-9a-f]{{{KEY_ID_HEX_CHARS}}}")
_PAYLOAD_PATTERN = re.compile(r"[A-Za-z0-9_-]*")


@functools.lru_cache(maxsize=8)
def _stretch(passphrase: str) -> bytes:
    """The scrypt root key of ``passphrase``.

    Memoised so that loading the same settings twice in one process (startup,
    then a CLI command or a test) does not pay the deliberate slowness again.
    The cache lives only in this process's memory, which already holds the
    configured key in the settings.
    """
    kdf = Scrypt(salt=ROOT_KEY_SALT, length=ROOT_KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class SecretContext:
    """Where a secret is stored; it becomes the ciphertext's associated data (AAD)."""

    table: str
    column: str
    row_id: str

    def __post_init__(self) -> None:
        for name in ("table", "column", "row_id"):
            if not isinstance(getattr(self, name), str):
                # A UUID or int here would encode differently elsewhere and make the
                # value unreadable later; insist on the caller choosing the string form.
                raise TypeError(f"SecretContext.{name} must be a str")

    def aad(self) -> bytes:
        """A canonical encoding of the location: every field prefixed with its length.

        Length prefixes make the encoding unambiguous, so ("a:b", "c") and
        ("a", "b:c") can never produce the same bytes.  The format version is
        included so that a later format cannot accept a v1 body as its own.
        """
        parts = (VERSION, self.table, self.column, self.row_id)
        encoded = [part.encode("utf-8") for part in parts]
        return b"".join(len(part).to_bytes(4, "big") + part for part in encoded)


class MasterKey:
    """One configured key, stretched once into the root key all value keys derive from.

    The root key is kept in a private slot and never appears in ``repr``;
    only the public key id does.
    """

    __slots__ = ("_key_id", "_root")

    def __init__(self, root: bytes) -> None:
        if len(root) != ROOT_KEY_BYTES:
            raise ValueError(f"the root key must be {ROOT_KEY_BYTES} bytes")
        self._root = bytes(root)
        digest = hmac.new(self._root, KEY_ID_LABEL, hashlib.sha256).hexdigest()
        self._key_id = digest[:KEY_ID_HEX_CHARS]

    @classmethod
    def from_passphrase(cls, passphrase: str) -> MasterKey:
        """The key for a configured string (a passphrase or a random token).

        This runs scrypt (tens of milliseconds, 32 MiB of memory) the first
        time a given string is seen in this process; call it at startup.
        """
        if not passphrase:
            raise ValueError("an encryption key must not be empty")
        return cls(_stretch(passphrase))

    @property
    def key_id(self) -> str:
        """16 hex characters naming this key in stored values; reveals nothing about it."""
        return self._key_id

    def data_key(self, salt: bytes) -> bytes:
        """The AES-256 key for the value with this ``salt`` (HKDF, microseconds)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=DATA_KEY_INFO)
        return hkdf.derive(self._root)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self._key_id!r})"


@dataclass(frozen=True)
class _Envelope:
    """The parts of a stored ``engram:v1:`` value, before the body is decoded."""

    key_id: str
    payload: str


class KeyRing:
    """The current key (for writing) and previous keys (still accepted for reading).

    All methods are synchronous and cost microseconds once the keys are
    loaded, so they are safe to call on the event loop.
    """

    def __init__(self, current: MasterKey | None, previous: Sequence[MasterKey] = ()) -> None:
        self.current = current
        self._by_id: dict[str, MasterKey] = {key.key_id: key for key in previous}
        if current is not None:
            self._by_id[current.key_id] = current

    @property
    def current_key_id(self) -> str | None:
        """The id new values are written under, or None when no key is configured."""
        return self.current.key_id if self.current is not None else None

    @property
    def known_key_ids(self) -> frozenset[str]:
        """Every key id this ring can decrypt."""
        return frozenset(self._by_id)

    def require_current_key(self) -> MasterKey:
        """The current key; without one we refuse rather than store plaintext."""
        if self.current is None:
            raise EncryptionKeyMissingError()
        return self.current

    def encrypt(self, plaintext: str, context: SecretContext) -> str:
        """``plaintext`` encrypted under the current key and bound to ``context``.

        Two calls with the same input give different outputs (fresh salt and nonce).
        """
        key = self.require_current_key()
        salt = os.urandom(SALT_BYTES)
        nonce = os.urandom(NONCE_BYTES)
        body = AESGCM(key.data_key(salt)).encrypt(nonce, plaintext.encode("utf-8"), context.aad())
        payload = base64.urlsafe_b64encode(salt + nonce + body).rstrip(b"=").decode("ascii")
        return f"{FORMAT_PREFIX}{VERSION}:{key.key_id}:{payload}"

    @staticmethod
    def is_encrypted(stored: str) -> bool:
        """Whether ``stored`` is in one of our encrypted formats (any version)."""
        return stored.startswith(FORMAT_PREFIX)

    def decrypt(self, stored: str, context: SecretContext) -> str:
        """The plaintext of a stored value.

        A value without the ``engram:`` prefix predates encryption and is
        returned as it is (dual read), so a database can be upgraded before
        its values are rewritten.  Errors never include the plaintext or key.
        """
        if not self.is_encrypted(stored):
            return stored
        envelope = self._parse(stored)
        key = self._by_id.get(envelope.key_id)
        if key is None:
            raise UnknownEncryptionKeyError(envelope.key_id)
        raw = self._decode(envelope.payload)
        salt = raw[:SALT_BYTES]
        nonce = raw[SALT_BYTES : SALT_BYTES + NONCE_BYTES]
        body = raw[SALT_BYTES + NONCE_BYTES :]
        try:
            plaintext = AESGCM(key.data_key(salt)).decrypt(nonce, body, context.aad())
        except InvalidTag as error:
            raise SecretDecryptionError() from error
        return plaintext.decode("utf-8")

    def needs_rewrite(self, stored: str) -> bool:
        """Whether a re-encryption pass should rewrite ``stored``.

        True for legacy plaintext, for values under a key other than the
        current one, and for values in a format this version cannot parse (the
        rewrite then reports them as unreadable).  Never raises, so a scan over
        a table is not stopped by one odd value.
        """
        if not self.is_encrypted(stored):
            return True
        try:
            envelope = self._parse(stored)
        except SecretDecryptionError:
            return True
        return envelope.key_id != self.current_key_id

    @staticmethod
    def _parse(stored: str) -> _Envelope:
        parts = stored.split(":", 3)
        if len(parts) != 4 or parts[1] != VERSION:
            raise SecretDecryptionError("unknown secret format version")
        key_id, payload = parts[2], parts[3]
        # Checked before the key id is echoed in an error message.
        if not _KEY_ID_PATTERN.fullmatch(key_id):
            raise SecretDecryptionError("malformed key id")
        return _Envelope(key_id=key_id, payload=payload)

    @staticmethod
    def _decode(payload: str) -> bytes:
        # The stdlib decoder silently skips characters outside the alphabet; refuse
        # them instead, so a mangled value is reported rather than half-accepted.
        if not _PAYLOAD_PATTERN.fullmatch(payload):
            raise SecretDecryptionError("the value is not valid base64url")
        try:
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError) as error:
            raise SecretDecryptionError("the value is not valid base64url") from error
        if len(raw) < SALT_BYTES + NONCE_BYTES + TAG_BYTES:
            raise SecretDecryptionError("the value is too short")
        return raw

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current_key_id!r}, known={sorted(self._by_id)!r})"
