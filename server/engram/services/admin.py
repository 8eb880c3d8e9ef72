"""Organizations, users and API keys.

API keys are random 256-bit tokens shown once; only their SHA-256 is stored.
A fast hash is right here (unlike for passwords): the secret is uniformly
random and long, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.caller import Caller
from engram.services.common import load
from engram.services.errors import InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import created_key, cut_page, oldest_first, page_request
from engram.store.database import Database
from engram.store.errors import UniqueViolationError
from engram.store.models import ApiKey, Organization, User

KEY_PREFIX = "engram_"
DISPLAY_PREFIX_LENGTH = 14
MAX_NAME_LENGTH = 200
# The organization and user of the local single-user mode.
DEFAULT_ORGANIZATION_ID = "org-00000000-0000-4000-8000-00000000e0e0"
DEFAULT_USER_ID = "user-00000000-0000-4000-8000-00000000e0e0"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _check_name(value: str, field: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError.field(field, f"must be 1 to {MAX_NAME_LENGTH} characters")
    return name


@dataclass
class IssuedKey:
    """A new key and its secret; the secret exists nowhere else."""

    key: ApiKey
    secret: str


async def ensure_default_identity(database: Database) -> Caller:
    """The organization and user of the local single-user mode, created on first use."""

    async def work(session: AsyncSession) -> None:
        if await session.get(Organization, DEFAULT_ORGANIZATION_ID) is None:
            session.add(Organization(id=DEFAULT_ORGANIZATION_ID, name="default"))
            await session.flush()
        if await session.get(User, DEFAULT_USER_ID) is None:
            session.add(
                User(id=DEFAULT_USER_ID, organization_id=DEFAULT_ORGANIZATION_ID, name="local")
            )

    try:
        await database.run_transaction(work, None, all_organizations=True)
    except UniqueViolationError:
        # Another server starting on the same fresh database created them first;
        # once more finds them (or the user it had not created yet).
        await database.run_transaction(work, None, all_organizations=True)
    return Caller(DEFAULT_ORGANIZATION_ID, DEFAULT_USER_ID, is_admin=True)


class AdminService:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create_organization(
        self, caller: Caller, display_name: str, request_id: str
    ) -> Organization:
        name = _check_name(display_name, "organization.display_name")

        async def create(session: AsyncSession) -> str:
            organization = Organization(name=name)
            session.add(organization)
            await session.flush()
            return organization.id

        organization_id = await create_once(
            self.database, caller.organization_id, "CreateOrganization", request_id, create
        )
        return await self.get_organization(organization_id)

    async def get_organization(self, organization_id: str) -> Organization:
        async with self.database.read(None) as session:
            organization: Organization = await load(
                session, Organization, organization_id, "organization"
            )
            return organization

    async def list_organizations(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[Organization], str]:
        page = page_request(page_size, page_token, {})
        async with self.database.read(None) as session:
            rows = (
                await session.scalars(oldest_first(select(Organization), Organization, page))
            ).all()
        return cut_page(rows, page, created_key)

    async def delete_organization(self, organization_id: str) -> list[str]:
        """Delete an organization and everything in it; returns its keys' hashes for caches."""

        async def work(session: AsyncSession) -> list[str]:
            organization = await load(session, Organization, organization_id, "organization")
            key_hashes = list(
                await session.scalars(
                    select(ApiKey.key_hash).where(ApiKey.organization_id == organization_id)
                )
            )
            await session.delete(organization)
            return key_hashes

        result: list[str] = await self.database.run_transaction(work, None, all_organizations=True)
        return result

    async def create_user(
        self, caller: Caller, organization_id: str, display_name: str, request_id: str
    ) -> User:
        name = _check_name(display_name, "user.display_name")
        await self.get_organization(organization_id)

        async def create(session: AsyncSession) -> str:
            user = User(name=name)
            session.add(user)
            await session.flush()
            return user.id

        user_id = await create_once(
            self.database, organization_id, "CreateUser", request_id, create
        )
        async with self.database.read(organization_id) as session:
            user: User = await load(session, User, user_id, "user")
            return user

    async def list_users(
        self, organization_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[User], str]:
        await self.get_organization(organization_id)
        page = page_request(page_size, page_token, {"org": organization_id})
        async with self.database.read(organization_id) as session:
            rows = (await session.scalars(oldest_first(select(User), User, page))).all()
        return cut_page(rows, page, created_key)

    async def delete_user(self, organization_id: str, user_id: str) -> list[str]:
        """Delete a user and its keys; returns the keys' hashes so that caches can forget them."""

        async def work(session: AsyncSession) -> list[str]:
            user = await load(session, User, user_id, "user")
            key_hashes = list(
                await session.scalars(select(ApiKey.key_hash).where(ApiKey.user_id == user_id))
            )
            await session.delete(user)
            return key_hashes

        result: list[str] = await self.database.run_transaction(work, organization_id)
        return result

    async def create_api_key(
        self,
        organization_id: str,
        user_id: str,
        *,
        display_name: str = "",
        admin: bool = False,
        request_id: str = "",
    ) -> IssuedKey:
        """A new key; on a retried request id, the first key without its secret."""
        secret = new_key_secret()

        async def create(session: AsyncSession) -> str:
            await load(session, User, user_id, "user")
            key = ApiKey(
                user_id=user_id,
                name=display_name.strip(),
                display_prefix=secret[:DISPLAY_PREFIX_LENGTH],
                key_hash=hash_key(secret),
                is_admin=admin,
            )
            session.add(key)
            await session.flush()
            return key.id

        key_id = await create_once(
            self.database, organization_id, "CreateApiKey", request_id, create
        )
        async with self.database.read(organization_id) as session:
            key: ApiKey = await load(session, ApiKey, key_id, "API key")
        fresh = key.key_hash == hash_key(secret)
        return IssuedKey(key=key, secret=secret if fresh else "")

    async def list_api_keys(
        self, organization_id: str, *, page_size: int, page_token: str
    ) -> tuple[list[ApiKey], str]:
        await self.get_organization(organization_id)
        page = page_request(page_size, page_token, {"org": organization_id})
        async with self.database.read(organization_id) as session:
            rows = (await session.scalars(oldest_first(select(ApiKey), ApiKey, page))).all()
        return cut_page(rows, page, created_key)

    async def delete_api_key(self, organization_id: str, key_id: str) -> str:
        """Delete a key; returns its hash so that caches can forget it."""

        async def work(session: AsyncSession) -> str:
            key = await load(session, ApiKey, key_id, "API key")
            key_hash = key.key_hash
            await session.delete(key)
            return key_hash

        result: str = await self.database.run_transaction(work, organization_id)
        return result
