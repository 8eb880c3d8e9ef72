"""The server's services, registered before the listener opens and ready once storage is.

gRPC handlers must be registered before the server starts, but the server
starts (with health NOT_SERVING) before storage is ready, so that probes get
an answer during migrations.  Servicers therefore reach their services
through this object, which refuses calls with UNAVAILABLE until it is ready.
"""

from __future__ import annotations

from dataclasses import dataclass

from engram.adapters.embeddings.registry import EmbeddingRegistry
from engram.adapters.event_log.factory import EventLogBackend
from engram.adapters.event_log.memory_log import MemoryEventLog
from engram.adapters.event_log.signals import MemoryRunSignals
from engram.adapters.llm.registry import ProviderRegistry
from engram.api.turn_events import encode_run_record
from engram.config.settings import Settings
from engram.secrets import KeyRing
from engram.services.admin import AdminService
from engram.services.agents import AgentService
from engram.services.archives import ArchiveService
from engram.services.auth import ApiKeyAuthenticator
from engram.services.blocks import BlockService
from engram.services.caller import Caller
from engram.services.message_search import MessageSearchService
from engram.services.messages import MessageService
from engram.services.passages import PassageService
from engram.services.providers import ProviderService
from engram.services.run_executor import RunExecutor
from engram.services.runtime.compaction import DEFAULT_TRIGGER_FRACTION
from engram.services.sources import SourceService
from engram.services.tools import ToolService
from engram.store.database import Database
from engram.store.errors import DatabaseUnavailableError


@dataclass
class Services:
    database: Database
    authenticator: ApiKeyAuthenticator
    agents: AgentService
    blocks: BlockService
    tools: ToolService
    admin: AdminService
    messages: MessageService
    message_search: MessageSearchService
    providers: ProviderRegistry
    runtime_providers: ProviderService
    embeddings: EmbeddingRegistry
    archives: ArchiveService
    passages: PassageService
    sources: SourceService
    runs: RunExecutor
    run_events: EventLogBackend

    @classmethod
    def build(
        cls,
        database: Database,
        authenticator: ApiKeyAuthenticator,
        providers: ProviderRegistry,
        *,
        keyring: KeyRing | None = None,
        compaction_trigger: float = DEFAULT_TRIGGER_FRACTION,
        embeddings: EmbeddingRegistry | None = None,
        run_events: EventLogBackend | None = None,
        run_lease_seconds: float = 30.0,
    ) -> Services:
        """The services over ``database``; ``providers`` are the environment's.

        ``run_events`` is where runs' events are kept (see
        :func:`engram.adapters.event_log.factory.open_event_log`); without it,
        in this process's memory with the default retention.

        Without ``keyring`` the server refuses to store provider API keys
        (ENCRYPTION_KEY_MISSING) rather than keep them in plaintext.
        """
        runtime_providers = ProviderService(database, keyring or KeyRing(None), providers)
        # One registry (and its loaded models and HTTP clients) for every path that
        # embeds; without one, only the local models are available.
        embeddings = embeddings if embeddings is not None else EmbeddingRegistry({})
        passages = PassageService(database, embeddings)
        run_events = run_events or EventLogBackend(
            log=MemoryEventLog(retention_seconds=DEFAULT_RETENTION, max_length=DEFAULT_MAX_EVENTS),
            signals=MemoryRunSignals(),
            kind="memory",
        )
        runs = RunExecutor(database, run_events, encode_run_record, lease_seconds=run_lease_seconds)
        return cls(
            database=database,
            authenticator=authenticator,
            agents=AgentService(database),
            blocks=BlockService(database),
            tools=ToolService(database),
            admin=AdminService(database),
            # Turns resolve model handles against the organization's providers first.
            messages=MessageService(
                database,
                runtime_providers,
                compaction_trigger=compaction_trigger,
                archival=passages,
                executor=runs,
            ),
            message_search=MessageSearchService(database),
            providers=providers,
            runtime_providers=runtime_providers,
            embeddings=embeddings,
            archives=ArchiveService(database, embeddings),
            passages=passages,
            # Ingestion shares the passages' vector indexes (one set per process).
            sources=SourceService(database, embeddings, passages.indexes),
            runs=runs,
            run_events=run_events,
        )

    async def prepare(self) -> None:
        """What must be done before the first call: compare this server's clock with the
        database's, so that the first runs' leases are written on the database's clock."""
        await self.runs.sync_clock_or_warn()

    def start(self) -> None:
        """Start the background work: resuming ingestions a previous server left unfinished,
        and keeping runs' leases (and ending runs whose server died)."""
        self.sources.start()
        self.runs.start()

    async def drain_runs(self, grace: float) -> None:
        """Let runs in progress finish within ``grace``; end the rest as interrupted."""
        await self.runs.drain(grace)

    async def close(self) -> None:
        """Release what the services hold (cached provider clients); not the database."""
        # First, while the database is still open: running ingestions give their files
        # back, and runs still going end as interrupted with their logs closed.
        await self.runs.close()
        await self.run_events.close()
        await self.sources.close()
        await self.runtime_providers.close()
        await self.embeddings.close()


# The in-process event log's limits when the caller configures none (the settings' defaults).
DEFAULT_RETENTION = 3 * 3600.0
DEFAULT_MAX_EVENTS = 10_000


class Application:
    """Holds the services once they exist, and the settings the servicers read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._services: Services | None = None

    def ready(self, services: Services) -> None:
        self._services = services

    @property
    def services(self) -> Services:
        if self._services is None:
            raise DatabaseUnavailableError("the server is still starting; retry shortly")
        return self._services

    async def authenticate(self, bearer_token: str | None, method: str) -> Caller:
        return await self.services.authenticator.authenticate(bearer_token, method)
