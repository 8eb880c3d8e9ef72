"""Errors of the secrets key ring; each has a stable reason from the ErrorReason catalog."""

from __future__ import annotations


class SecretsError(Exception):
    """Base of the key ring's errors. Messages never contain key material or plaintext."""

    reason = "SECRET_DECRYPTION_FAILED"


class EncryptionKeyMissingError(SecretsError):
    reason = "ENCRYPTION_KEY_MISSING"

    def __init__(self) -> None:
        super().__init__(
            "no encryption key is configured, and secrets are never stored in plaintext: "
            "set ENGRAM_ENCRYPTION_KEY (alias LETTA_ENCRYPTION_KEY)"
        )


class UnknownEncryptionKeyError(SecretsError):
    reason = "ENCRYPTION_KEY_UNKNOWN"

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"this secret was encrypted with key {key_id}, which is not configured; "
            "add that key to ENGRAM_ENCRYPTION_KEYS_PREVIOUS"
        )
        self.key_id = key_id


class SecretDecryptionError(SecretsError):
    reason = "SECRET_DECRYPTION_FAILED"

    def __init__(self, detail: str = "") -> None:
        message = "a stored secret failed its integrity check (tampered, or moved from another row)"
        super().__init__(f"{message}: {detail}" if detail else message)
