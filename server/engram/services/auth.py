"""Authenticating calls: API keys, or the local single-user mode.

The local mode (no key needed; everything happens in a default organization)
is only for a server on loopback with no API keys, or one started with
``--insecure``; see :func:`decide_auth_mode`.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from datetime import timedelta

from sqlalchemy import func, select

from engram.services.admin import ensure_default_identity, hash_key
from engram.services.caller import Caller
from engram.services.errors import PermissionDeniedError, UnauthenticatedError
from engram.store.database import Database
from engram.store.diagnostics import StartupError
from engram.store.models import ApiKey
from engram.store.types import utc_now

ADMIN_METHOD_PREFIX = "/engram.v1.AdminService/"
# How long a verified key is trusted without looking it up again. A revoked
# key stops working on this replica at once, on others within this time.
CACHE_SECONDS = 10.0
LAST_USE_RESOLUTION = timedelta(minutes=1)


class AuthMode(enum.StrEnum):
    API_KEYS = "api-keys"
    LOCAL = "local"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def decide_auth_mode(database: Database, host: str, *, insecure: bool) -> AuthMode:
    """API keys once any exist; otherwise local mode on loopback (or with --insecure)."""
    async with database.read(None, all_organizations=True) as session:
        keys = int(await session.scalar(select(func.count()).select_from(ApiKey)) or 0)
    if keys:
        return AuthMode.API_KEYS
    if is_loopback(host) or insecure:
        return AuthMode.LOCAL
    raise StartupError(
        f"refusing to listen on {host} without authentication: create an admin key with "
        "`engram keys create --admin` (then restart), bind to 127.0.0.1, or pass --insecure "
        "to run without authentication on purpose"
    )


class ApiKeyAuthenticator:
    """Resolves the caller of each call from its bearer token."""

    def __init__(self, database: Database, mode: AuthMode, local_caller: Caller | None) -> None:
        self.database = database
        self.mode = mode
        self.local_caller = local_caller
        self._cache: dict[str, tuple[Caller, float]] = {}

    @classmethod
    async def create(cls, database: Database, host: str, *, insecure: bool) -> ApiKeyAuthenticator:
        mode = await decide_auth_mode(database, host, insecure=insecure)
        local = await ensure_default_identity(database) if mode is AuthMode.LOCAL else None
        return cls(database, mode, local)

    async def authenticate(self, bearer_token: str | None, method: str) -> Caller:
        if bearer_token is None:
            if self.local_caller is None:
                raise UnauthenticatedError(
                    "this server needs an API key: send the metadata `authorization: Bearer <key>`"
                )
            caller = self.local_caller
        else:
            caller = await self._caller_for(bearer_token)
        if method.startswith(ADMIN_METHOD_PREFIX) and not caller.is_admin:
            raise PermissionDeniedError("AdminService needs an admin API key")
        return caller

    def forget(self, key_hash: str) -> None:
        """Stop trusting a key at once (after it was deleted through this process)."""
        self._cache.pop(key_hash, None)

    async def _caller_for(self, token: str) -> Caller:
        key_hash = hash_key(token)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self.database.read(None, all_organizations=True) as session:
            key = (await session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash))).first()
        moment = utc_now()
        if (
            key is None
            or key.revoked_at is not None
            or (key.expires_at is not None and key.expires_at <= moment)
        ):
            self._cache.pop(key_hash, None)
            raise UnauthenticatedError("the API key is not valid (unknown, revoked or expired)")
        caller = Caller(key.organization_id, key.user_id, is_admin=key.is_admin, api_key_id=key.id)
        self._cache[key_hash] = (caller, now + CACHE_SECONDS)
        if key.last_used_at is None or moment - key.last_used_at > LAST_USE_RESOLUTION:
            await self._touch(key.organization_id, key.id)
        return caller

    async def _touch(self, organization_id: str, key_id: str) -> None:
        async with self.database.transaction(organization_id) as session:
            key = await session.get(ApiKey, key_id)
            if key is not None:
                key.last_used_at = utc_now()
