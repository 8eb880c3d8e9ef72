"""The ``engram`` command.

``engram serve`` runs the gRPC server; ``engram db ...`` manages the schema;
``engram config`` shows what the environment resolves to; ``engram secrets
rotate`` re-encrypts stored secrets under the current key.

Exit status: 0 on success, 1 when a check finds a problem, 2 when the
configuration or the database does not allow the command to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CANNOT_RUN = 2

logger = logging.getLogger("engram")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engram", description="A gRPC server for stateful LLM agents with long-term memory."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", help="address to bind (default ENGRAM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default ENGRAM_PORT or 50051)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving without API keys on a non-loopback address (no authentication)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N server processes sharing the port with SO_REUSEPORT (Linux; default 1)",
    )
    # Set by the --workers supervisor on the processes it starts.
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    keys = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create_key = keys_commands.add_parser(
        "create", help="create an API key and print its secret (shown only once)"
    )
    create_key.add_argument("--admin", action="store_true", help="allow AdminService calls")
    create_key.add_argument("--name", default="", help="a label for the key")
    create_key.add_argument(
        "--organization",
        help="organization id (default: the default organization, created if needed)",
    )
    create_key.add_argument("--user", help="user id in that organization (default: its first user)")

    db = commands.add_parser("db", help="manage the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema up (default: to head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = db_commands.add_parser("downgrade", help="migrate the schema down to REVISION")
    downgrade.add_argument("revision", help='a revision id, "-1", or "base"')
    db_commands.add_parser("current", help="print the schema revision of the database")
    db_commands.add_parser("check", help="exit non-zero when the models and the migrations differ")

    commands.add_parser("config", help="print the resolved settings as JSON (secrets redacted)")

    secrets = commands.add_parser("secrets", help="manage encrypted secrets")
    secrets_commands = secrets.add_subparsers(
        dest="secrets_command", required=True, metavar="ACTION"
    )
    secrets_commands.add_parser(
        "rotate", help="re-encrypt every stored secret under the current ENGRAM_ENCRYPTION_KEY"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from engram.config.settings import get_settings, settings_problems
    except ImportError as error:  # pragma: no cover - depends on the install
        print(
            f"engram: the server is not installed ({error}); install engram[server]",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    from pydantic import ValidationError

    try:
        settings = get_settings()
    except ValidationError as error:
        print(f"engram: {settings_problems(error)}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.debug:
        # Chatter that says nothing an operator needs: Alembic's plugin
        # registration, the pool's own dispose/recreate notices, and a line per
        # HTTP request to an LLM provider from the SDKs' HTTP client (httpx, or httpx2).
        for noisy in ("alembic.runtime.plugins", "engram.store.pool", "httpx", "httpx2"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "serve": _serve,
        "db": _db,
        "config": _config,
        "secrets": _secrets,
        "keys": _keys,
    }
    from engram.config.database_choice import ConfigurationError
    from engram.config.event_loop import resolve_event_loop, run_on_loop
    from engram.store.diagnostics import StartupError

    try:
        loop = resolve_event_loop(settings.event_loop)
        return run_on_loop(loop, handlers[args.command](args))
    except (ConfigurationError, StartupError) as error:
        print(f"engram: {error}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve(args: argparse.Namespace) -> int:
    from engram.adapters.embeddings.registry import EmbeddingRegistry
    from engram.adapters.event_log.factory import open_event_log
    from engram.adapters.llm.registry import ProviderRegistry, import_provider_sdks
    from engram.config.settings import get_settings
    from engram.rpc.application import Application, Services
    from engram.rpc.server import serve
    from engram.services.auth import ApiKeyAuthenticator, AuthMode
    from engram.services.startup import open_storage
    from engram.services.telemetry import Telemetry

    settings = get_settings()
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        settings = settings.model_copy(update=overrides)
    if args.workers != 1:
        return await _supervise_workers(args, settings)
    telemetry = Telemetry.start(settings)
    app = Application(settings)

    async def prepare() -> Callable[[], Awaitable[None]]:
        storage = await open_storage(settings)
        try:
            authenticator = await ApiKeyAuthenticator.create(
                storage.database, settings.host, insecure=args.insecure
            )
        except BaseException:
            await storage.close()
            raise
        if authenticator.mode is AuthMode.LOCAL:
            logger.warning(
                "no API keys exist: serving without authentication in the default organization "
                "(create one with `engram keys create --admin`, then restart)"
            )
        telemetry.watch_pool(storage.database)
        providers = ProviderRegistry.from_environment(os.environ)
        logger.info("LLM providers configured: %s", ", ".join(providers.names) or "none")
        try:
            run_events = await open_event_log(
                settings.resolved_redis_url,
                retention_seconds=settings.run_event_retention_seconds,
                max_length=settings.run_event_max_length,
                max_followers=settings.redis_max_followers,
            )
        except BaseException:
            await storage.close()
            raise
        logger.info("run events kept in %s", run_events.kind)
        logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
        services = Services.build(
            storage.database,
            authenticator,
            providers,
            keyring=storage.keyring,
            compaction_trigger=settings.compaction_trigger_fraction,
            embeddings=EmbeddingRegistry.from_settings(settings, os.environ),
            run_events=run_events,
            run_lease_seconds=settings.run_lease_seconds,
        )
        await services.prepare()
        services.start()
        app.ready(services)
        # The provider SDKs, imported off the event loop while the server
        # already answers (held: the loop keeps only weak references to tasks).
        sdk_import = asyncio.create_task(asyncio.to_thread(import_provider_sdks))

        async def release() -> None:
            sdk_import.cancel()  # a shutdown does not wait for it
            telemetry.stop_watching_pool()
            await services.close()
            await providers.close()
            await storage.close()

        return release

    try:
        await serve(
            settings,
            prepare,
            app=app,
            meter=telemetry.call_meter(),
            reuse_port=args.reuse_port,
        )
    finally:
        telemetry.close()
    return EXIT_OK


async def _supervise_workers(args: argparse.Namespace, settings: Any) -> int:
    """Prepare storage once, then run ``--workers`` server processes on one port."""
    from engram.rpc.workers import KILL_MARGIN_SECONDS, supervise, worker_command
    from engram.services.auth import decide_auth_mode
    from engram.services.startup import open_storage

    if args.workers < 1:
        print("engram: --workers must be at least 1", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if settings.port == 0:
        print("engram: --workers needs a fixed port (workers cannot share port 0)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    # Migrate (embedded default) and check authentication once, before any worker
    # exists, so that workers neither race to migrate nor each fail the same way.
    storage = await open_storage(settings)
    try:
        await decide_auth_mode(storage.database, settings.host, insecure=args.insecure)
    finally:
        await storage.close()
    if settings.resolved_redis_url is None:
        logger.warning(
            "%d workers without ENGRAM_REDIS_URL: each keeps its runs' events in its own "
            "memory, so StreamRun and CancelRun only work when they reach the worker running "
            "the run; set ENGRAM_REDIS_URL to share them",
            args.workers,
        )
    command = worker_command(settings.host, settings.port, insecure=args.insecure)
    patience = settings.drain_delay_seconds + settings.shutdown_grace_seconds + KILL_MARGIN_SECONDS
    return await supervise(command, args.workers, stop_patience=patience)


async def _keys(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from engram.config.settings import get_settings
    from engram.services.admin import AdminService, ensure_default_identity
    from engram.services.startup import open_storage
    from engram.store.models import User

    storage = await open_storage(get_settings())
    try:
        database = storage.database
        if args.organization is None:
            caller = await ensure_default_identity(database)
            organization_id, user_id = caller.organization_id, caller.user_id
        else:
            organization_id = args.organization
            chosen: str | None = args.user
            if chosen is None:
                async with database.read(organization_id) as session:
                    chosen = await session.scalar(select(User.id).order_by(User.created_at))
            if chosen is None:
                print(f"engram: organization {organization_id} has no users", file=sys.stderr)
                return EXIT_CANNOT_RUN
            user_id = chosen
        issued = await AdminService(database).create_api_key(
            organization_id, user_id, display_name=args.name, admin=args.admin
        )
    finally:
        await storage.close()
    print(issued.secret)
    print(
        f"created {'admin ' if args.admin else ''}API key {issued.key.id} for "
        f"organizations/{organization_id}/users/{user_id}; the secret above is shown only once",
        file=sys.stderr,
    )
    return EXIT_OK


async def _db(args: argparse.Namespace) -> int:
    from engram.config.settings import get_settings
    from engram.services.startup import open_storage
    from engram.store import migrations

    storage = await open_storage(get_settings(), require_schema=False)
    engine = storage.database.engine
    try:
        if args.db_command == "upgrade":
            await migrations.upgrade(engine, args.revision, keyring=storage.keyring)
            print(f"upgraded to {(await migrations.schema_state(engine)).current}")
            return EXIT_OK
        if args.db_command == "downgrade":
            await migrations.downgrade(engine, args.revision)
            print(f"downgraded to {(await migrations.schema_state(engine)).current or 'base'}")
            return EXIT_OK
        state = await migrations.schema_state(engine)
        if args.db_command == "current":
            suffix = " (head)" if state.at_head else f" (head is {state.head})"
            print(f"{state.current or 'empty'}{suffix}")
            return EXIT_OK
        return await _check(engine, state)
    finally:
        await storage.close()


async def _check(engine: Any, state: Any) -> int:
    from engram.store import migrations

    if not state.at_head:
        print(
            f"the database is at {state.current or 'no revision'}, not at head {state.head}; "
            "run `engram db upgrade` before checking for drift",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    drift = await migrations.model_drift(engine)
    if drift:
        print("the models and the migrations differ; add a migration for:", file=sys.stderr)
        for difference in drift:
            print(f"  {difference}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"the models match the migrations (head {state.head})")
    return EXIT_OK


async def _config(args: argparse.Namespace) -> int:
    from engram.config.database_choice import ConfigurationError, choose_database
    from engram.config.settings import get_settings

    settings = get_settings()
    document: dict[str, Any] = {"settings": json.loads(settings.model_dump_json())}
    status = EXIT_OK
    try:
        choice = choose_database(settings)
        document["database"] = {
            "engine": choice.engine.value,
            "url": choice.redacted_url,
            "reason": choice.reason,
        }
    except ConfigurationError as error:
        document["database"] = {"error": str(error)}
        status = EXIT_CANNOT_RUN
    print(json.dumps(document, indent=2, sort_keys=True, default=str))
    return status


async def _secrets(args: argparse.Namespace) -> int:
    from engram.config.settings import get_settings
    from engram.services.startup import open_storage
    from engram.store.secret_columns import rotate_secrets

    storage = await open_storage(get_settings())
    try:
        report = await rotate_secrets(storage.database, storage.keyring)
    finally:
        await storage.close()
    for line in report.lines():
        print(line)
    return EXIT_OK if not report.failed else EXIT_CHECK_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
