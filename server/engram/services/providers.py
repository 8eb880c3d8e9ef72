"""LLM providers an organization configures at run time, and model handles resolved with them.

A provider's ``provider_name`` is the first part of the model handles that
reach it (``myprov/gpt-4o-mini``).  A handle is resolved against the
organization's own providers first and then against the providers the
server's environment configures, so an organization can override an
environment provider for itself by taking its name.

The API key is encrypted at rest with the storage's key ring (the column is
marked encrypted, so key rotation covers it) and never leaves this module in
plaintext except towards the provider's SDK client.  Two caches keep a turn
from paying for this:

* each organization's provider rows, for ``ROWS_TTL_SECONDS``: a write
  through this service drops its organization's entry at once, so in this
  process a change takes effect on the next turn; other processes (workers,
  replicas) see it within the TTL;
* SDK clients, per (organization, provider name) together with the row's
  etag, so that a client is rebuilt only when its provider changed.  A
  replaced client is not closed here, since a turn still running may hold
  it; the SDKs close their HTTP client once nothing references it any more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.llm.errors import ProviderError
from engram.adapters.llm.registry import (
    PROVIDER_KINDS,
    LLMProvider,
    ProviderConfig,
    ProviderNotConfiguredError,
    ProviderRegistry,
    build_provider,
)
from engram.secrets import KeyRing
from engram.secrets.errors import SecretsError
from engram.services.caller import Caller
from engram.services.common import load
from engram.services.errors import EtagMismatchError, FieldViolation, InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import by_key, cut_page, page_request
from engram.store.database import Database
from engram.store.errors import UniqueViolationError
from engram.store.ids import IdPrefix, new_id
from engram.store.models import Provider
from engram.store.secret_columns import read_secret, write_secret
from engram.store.types import utc_now

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_URL_LENGTH = 1000
HINT_KEY = "api_key_hint"
HINT_CHARS = 4
# A key this short or shorter gets no hint: four characters would be half of it.
HINT_MIN_KEY_LENGTH = 9
UPDATABLE_FIELDS = frozenset({"provider_name", "provider_type", "base_url", "api_key"})
# How long ListModels waits for one provider's model list.
LIST_MODELS_TIMEOUT_SECONDS = 15.0
# How long an organization's provider rows are reused for resolving handles
# (a read per turn cost about 2 ms on SQLite, a tenth of a step).
ROWS_TTL_SECONDS = 2.0

ENVIRONMENT = "environment"
ORGANIZATION = "organization"

Builder = Callable[[ProviderConfig], LLMProvider]


@dataclass(frozen=True)
class ModelEntry:
    """One model an organization can use, and the provider it comes from."""

    handle: str
    model: str
    provider_name: str
    provider_id: str  # "" for an environment provider
    source: str  # ENVIRONMENT or ORGANIZATION
    provider_type: str


@dataclass(frozen=True)
class ProviderAnswer:
    """How one provider answered a model listing: how many models, or why none."""

    provider_name: str
    provider_id: str
    source: str
    provider_type: str
    model_count: int = 0
    error_reason: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class ModelListing:
    models: list[ModelEntry]
    providers: list[ProviderAnswer]


@dataclass(frozen=True)
class _Target:
    """A provider to ask for its models; ``row`` is None for an environment provider."""

    name: str
    source: str
    provider_type: str
    row: Provider | None = None
    client: LLMProvider | None = None

    @property
    def provider_id(self) -> str:
        return self.row.id if self.row is not None else ""


def provider_etag(row: Provider) -> str:
    """The etag of a provider row: a digest of everything an update can change.

    The table has no version column; the digest covers ``updated_at`` and
    every stored field (the key's ciphertext included, which differs on each
    write), so any update yields a new etag.
    """
    state = [
        row.updated_at.isoformat(),
        row.name,
        row.provider_type,
        row.base_url,
        row.api_key_enc,
        row.settings,
    ]
    canonical = json.dumps(state, sort_keys=True, default=str)
    return f'"{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"'


def has_api_key(row: Provider) -> bool:
    return row.api_key_enc is not None


def api_key_hint(row: Provider) -> str:
    return str((row.settings or {}).get(HINT_KEY, "")) if has_api_key(row) else ""


def _check_etag(given: str, row: Provider) -> None:
    if given and given.strip('"') != provider_etag(row).strip('"'):
        raise EtagMismatchError(f"providers/{row.id}")


def _name_violation(name: str) -> FieldViolation | None:
    if not name:
        return FieldViolation("provider.provider_name", "is required")
    if not NAME_PATTERN.fullmatch(name):
        return FieldViolation(
            "provider.provider_name",
            "must be 1 to 64 characters: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (it is the first part of model handles, "
            "so it cannot contain '/')",
        )
    return None


def _url_violation(url: str) -> FieldViolation | None:
    if not url:
        return None
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https") or not parts.hostname:
        return FieldViolation(
            "provider.base_url",
            f"must be an http:// or https:// URL with a host, at most {MAX_URL_LENGTH} characters",
        )
    return None


def validate_provider_fields(values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """The fields of a create or an update, checked one by one (the combination comes later)."""
    unknown = set(values) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"not provider fields: {sorted(unknown)}")
    clean = {name: str(value or "") for name, value in values.items()}
    if "base_url" in clean:
        clean["base_url"] = clean["base_url"].strip()
    violations: list[FieldViolation] = []
    if creating or "provider_name" in clean:
        violation = _name_violation(clean.get("provider_name", ""))
        if violation is not None:
            violations.append(violation)
    if creating or "provider_type" in clean:
        kind = clean.get("provider_type", "")
        if kind not in PROVIDER_KINDS:
            violations.append(
                FieldViolation(
                    "provider.provider_type", "is required: one of the known provider types"
                )
            )
    violation = _url_violation(clean.get("base_url", ""))
    if violation is not None:
        violations.append(violation)
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def _check_complete(row: Provider) -> None:
    """A provider's type may need a key or a URL; checked on the row as it will be stored."""
    kind = PROVIDER_KINDS[row.provider_type]
    violations: list[FieldViolation] = []
    if kind.key_required and not has_api_key(row):
        violations.append(
            FieldViolation("provider.api_key", f"is required for a {kind.name} provider")
        )
    if kind.url_required and not row.base_url:
        violations.append(
            FieldViolation("provider.base_url", f"is required for a {kind.name} provider")
        )
    if violations:
        raise InvalidArgumentError(violations)


def _name_taken(error: UniqueViolationError, name: str) -> UniqueViolationError:
    """The store's unique violation with a message that says what to do."""
    if error.constraint and "name" not in error.constraint:
        return error
    return UniqueViolationError(
        f"the organization already has a provider named {name!r}; update it, or pick another name",
        table=error.table,
        constraint=error.constraint,
        columns=error.columns,
    )


class ProviderService:
    """CRUD of an organization's providers, model listing, and model handle resolution.

    ``registry`` holds the providers configured from the environment; it is
    owned (and closed) by whoever built it.  ``build`` turns a configuration
    into an adapter (tests swap it to turn SDK retries off).
    """

    def __init__(
        self,
        database: Database,
        keyring: KeyRing,
        registry: ProviderRegistry,
        *,
        build: Builder = build_provider,
        list_timeout: float = LIST_MODELS_TIMEOUT_SECONDS,
        rows_ttl: float = ROWS_TTL_SECONDS,
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.registry = registry
        self._build = build
        self._list_timeout = list_timeout
        self._rows_ttl = rows_ttl
        # organization id -> (monotonic expiry, its provider rows by name)
        self._rows: dict[str, tuple[float, dict[str, Provider]]] = {}
        # (organization id, provider name) -> (etag, provider id, client)
        self._clients: dict[tuple[str, str], tuple[str, str, LLMProvider]] = {}

    # --- resources -----------------------------------------------------------------

    async def create(self, caller: Caller, values: Mapping[str, Any], request_id: str) -> Provider:
        clean = validate_provider_fields(values, creating=True)

        async def create(session: AsyncSession) -> str:
            row = Provider(id=new_id(IdPrefix.PROVIDER), settings={})
            self._apply(row, clean)
            _check_complete(row)
            session.add(row)
            await session.flush()
            return row.id

        try:
            provider_id = await create_once(
                self.database, caller.organization_id, "CreateProvider", request_id, create
            )
        except UniqueViolationError as error:
            raise _name_taken(error, clean["provider_name"]) from error
        self._rows.pop(caller.organization_id, None)
        return await self.get(caller, provider_id)

    async def get(self, caller: Caller, provider_id: str) -> Provider:
        async with self.database.read(caller.organization_id) as session:
            row: Provider = await load(session, Provider, provider_id, "provider")
            return row

    async def list_page(
        self, caller: Caller, *, page_size: int, page_token: str
    ) -> tuple[list[Provider], str]:
        page = page_request(page_size, page_token, {})
        async with self.database.read(caller.organization_id) as session:
            query = by_key(select(Provider), Provider.name, Provider, page)
            rows = (await session.scalars(query)).all()
        return cut_page(rows, page, lambda row: (row.name, row.id))

    async def update(
        self, caller: Caller, provider_id: str, changes: Mapping[str, Any], etag: str
    ) -> Provider:
        clean = validate_provider_fields(changes, creating=False)

        async def work(session: AsyncSession) -> None:
            row = await load(session, Provider, provider_id, "provider", lock=True)
            _check_etag(etag, row)
            self._apply(row, clean)
            _check_complete(row)
            row.updated_at = utc_now()

        try:
            await self.database.run_transaction(work, caller.organization_id)
        except UniqueViolationError as error:
            raise _name_taken(error, clean.get("provider_name", "")) from error
        self._rows.pop(caller.organization_id, None)
        return await self.get(caller, provider_id)

    async def delete(self, caller: Caller, provider_id: str, etag: str) -> None:
        async def work(session: AsyncSession) -> str:
            row = await load(session, Provider, provider_id, "provider", lock=True)
            _check_etag(etag, row)
            await session.delete(row)
            return row.name

        name = await self.database.run_transaction(work, caller.organization_id)
        self._rows.pop(caller.organization_id, None)
        self._clients.pop((caller.organization_id, name), None)

    def _apply(self, row: Provider, values: Mapping[str, str]) -> None:
        if "provider_name" in values:
            row.name = values["provider_name"]
        if "provider_type" in values:
            row.provider_type = values["provider_type"]
        if "base_url" in values:
            row.base_url = values["base_url"] or None
        if "api_key" in values:
            key = values["api_key"] or None
            write_secret(self.keyring, row, "api_key_enc", key)
            hint = key[-HINT_CHARS:] if key and len(key) >= HINT_MIN_KEY_LENGTH else ""
            row.settings = {**(row.settings or {}), HINT_KEY: hint}

    # --- model handles -------------------------------------------------------------

    async def resolve_model(self, organization_id: str, handle: str) -> tuple[LLMProvider, str]:
        """The provider and the provider's model name for ``handle``, as the organization sees it.

        The organization's rows come from a short-lived cache (see the
        module's docstring), the client from the client cache.
        """
        name, _, model = handle.partition("/")
        if name and model:
            row = (await self._organization_rows(organization_id)).get(name)
            if row is not None:
                return self._client_for(organization_id, row), model
            self._clients.pop((organization_id, name), None)
            environment = self.registry.get(name)
            if environment is not None:
                return environment, model
        configured = ", ".join(self.registry.names) or "none"
        raise ProviderNotConfiguredError(
            name or handle,
            f"no provider is configured for the model handle {handle!r}: the organization has "
            f"no provider named {name!r} and neither has the server's environment (configured "
            f"there: {configured}); create one with CreateProvider, or set its API key or base "
            "URL variable on the server",
        )

    async def _organization_rows(self, organization_id: str) -> dict[str, Provider]:
        """The organization's provider rows by name, read at most once per TTL."""
        now = time.monotonic()
        cached = self._rows.get(organization_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.database.read(organization_id) as session:
            rows = {row.name: row for row in (await session.scalars(select(Provider))).all()}
        self._rows[organization_id] = (now + self._rows_ttl, rows)
        return rows

    def _client_for(self, organization_id: str, row: Provider) -> LLMProvider:
        """The cached client of ``row``, or a new one if the row changed since it was built."""
        key = (organization_id, row.name)
        etag = provider_etag(row)
        cached = self._clients.get(key)
        if cached is not None and cached[0] == etag and cached[1] == row.id:
            return cached[2]
        kind = PROVIDER_KINDS.get(row.provider_type)
        if kind is None:
            raise ProviderNotConfiguredError(
                row.name, f"providers/{row.id} has the unknown type {row.provider_type!r}"
            )
        api_key = read_secret(self.keyring, row, "api_key_enc") or ""
        client = self._build(ProviderConfig(row.name, kind, api_key, row.base_url or ""))
        self._clients[key] = (etag, row.id, client)
        return client

    # --- model listing -------------------------------------------------------------

    async def list_models(self, caller: Caller, provider_name: str = "") -> ModelListing:
        """Every model the organization can use, asking all its providers at once.

        A provider that fails (unreachable, refused key, unreadable stored
        key, too slow) is reported with its error and lists nothing; it never
        fails the listing.
        """
        targets = await self._targets(caller.organization_id, provider_name)
        answers = await asyncio.gather(
            *(self._ask(caller.organization_id, target) for target in targets)
        )
        models = sorted(
            (model for _, found in answers for model in found), key=lambda entry: entry.handle
        )
        return ModelListing(models=models, providers=[answer for answer, _ in answers])

    async def _targets(self, organization_id: str, only: str) -> list[_Target]:
        async with self.database.read(organization_id) as session:
            query = select(Provider).order_by(Provider.name)
            if only:
                query = query.where(Provider.name == only)
            rows = list((await session.scalars(query)).all())
        targets = [_Target(row.name, ORGANIZATION, row.provider_type, row=row) for row in rows]
        overridden = {row.name for row in rows}
        for name in self.registry.names:
            client = self.registry.get(name)
            if name in overridden or (only and name != only) or client is None:
                continue
            targets.append(_Target(name, ENVIRONMENT, name, client=client))
        return sorted(targets, key=lambda target: target.name)

    async def _ask(
        self, organization_id: str, target: _Target
    ) -> tuple[ProviderAnswer, list[ModelEntry]]:
        answer = ProviderAnswer(
            target.name, target.provider_id, target.source, target.provider_type
        )
        try:
            client = (
                self._client_for(organization_id, target.row)
                if target.row is not None
                else target.client
            )
            if client is None:
                raise ProviderNotConfiguredError(target.name, "no client for this provider")
            names = await asyncio.wait_for(client.list_models(), self._list_timeout)
        except (ProviderError, SecretsError) as error:
            return replace(answer, error_reason=error.reason, error_message=str(error)), []
        except TimeoutError:
            message = f"{target.name}: no model list within {self._list_timeout:g} seconds"
            return replace(answer, error_reason="PROVIDER_TIMEOUT", error_message=message), []
        except Exception as error:
            # A provider answering something the SDK cannot parse must not
            # fail the whole listing; it is logged as the oddity it is.
            logger.warning("listing the models of %s failed", target.name, exc_info=error)
            message = f"{target.name}: the model list could not be read ({type(error).__name__})"
            failed = replace(
                answer, error_reason="INVALID_PROVIDER_RESPONSE", error_message=message
            )
            return failed, []
        models = [
            ModelEntry(
                handle=f"{target.name}/{name}",
                model=name,
                provider_name=target.name,
                provider_id=target.provider_id,
                source=target.source,
                provider_type=target.provider_type,
            )
            for name in names
        ]
        return replace(answer, model_count=len(models)), models

    async def close(self) -> None:
        """Close the cached clients (at shutdown; the environment's belong to the registry)."""
        clients, self._clients = self._clients, {}
        for _, _, client in clients.values():
            await client.close()
