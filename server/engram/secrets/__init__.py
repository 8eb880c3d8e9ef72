"""Encryption of secrets at rest (AES-256-GCM), independent of the store."""

from engram.secrets.cipher import KeyRing, MasterKey, SecretContext
from engram.secrets.errors import (
    EncryptionKeyMissingError,
    SecretDecryptionError,
    SecretsError,
    UnknownEncryptionKeyError,
)
from engram.secrets.keyring import KeySource, load_keyring

__all__ = [
    "EncryptionKeyMissingError",
    "KeyRing",
    "KeySource",
    "MasterKey",
    "SecretContext",
    "SecretDecryptionError",
    "SecretsError",
    "UnknownEncryptionKeyError",
    "load_keyring",
]
