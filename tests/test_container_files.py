"""The Dockerfile and compose.yaml agree with the code, checked without Docker.

Mistakes there fail silently: a misspelt ``ENGRAM_*`` variable is ignored (the settings ignore
unknown names) and the server falls back to its defaults, a port that moved is published but
never answered, a health check that cannot import its module marks a good container
unhealthy. So every name and number the two files share with the code is checked here.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import pytest

# PyYAML is not a direct dependency: it comes with the server extra (tokenizers ->
# huggingface_hub). Should that change, this import fails loudly rather than skipping.
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import AliasChoices

from engram.config.database_choice import DatabaseEngine, choose_database
from engram.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"

ENGRAM_NAME = re.compile(r"\bENGRAM_[A-Z0-9_]+\b")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


# --- reading the files ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each ``FROM ... AS name`` stage."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, arguments in instructions:
        if keyword == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {arguments}"
            current = named.setdefault(words[2], [])
        elif current is not None:
            current.append((keyword, arguments))
    return named


def only(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for k, arguments in instructions if k == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def healthcheck_command(instructions: list[tuple[str, str]]) -> list[str]:
    """The exec-form command of the runtime stage's HEALTHCHECK."""
    arguments = only(instructions, "HEALTHCHECK")
    options, separator, command = arguments.partition("CMD ")
    assert separator, f"HEALTHCHECK without CMD: {arguments}"
    assert all(option.startswith("--") for option in options.split()), options
    parsed = json.loads(command)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)
    return parsed


def setting_names() -> set[str]:
    """Every ENGRAM_* environment name a setting answers to."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(c.upper() for c in choices if isinstance(c, str) and c.startswith("ENGRAM_"))
    return names


def default_port() -> int:
    port = Settings.model_fields["port"].default
    assert isinstance(port, int)
    return port


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's ``${...}`` substitution, with ``environment`` as the shell's variables."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        current = environment.get(name)
        if op.endswith("?"):
            if current is None or (op == ":?" and not current):
                raise KeyError(f"{name} is required: {arg}")
            return current
        if op.endswith("-") and (current is None or (op == ":-" and not current)):
            return arg
        return current or ""

    return INTERPOLATION.sub(substitute, value)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: list[tuple[str, str]]) -> list[tuple[str, str]]:
    named = stages(dockerfile)
    last_from = [arguments for keyword, arguments in dockerfile if keyword == "FROM"][-1]
    return named[last_from.split()[-1]]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def service_environment(service: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: interpolate(str(value), shell) for name, value in environment.items()}


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE], ids=lambda p: p.name)
def test_every_engram_variable_is_a_setting(path: Path) -> None:
    used = set(ENGRAM_NAME.findall(path.read_text()))
    assert used, f"{path.name} names no ENGRAM_* variable: is this the right file?"
    unknown = sorted(used - setting_names())
    assert not unknown, f"{path.name} uses variables no setting reads: {unknown}"


def test_the_names_check_catches_a_misspelling() -> None:
    """The check above fails on a name the settings would silently ignore."""
    assert "ENGRAM_PG_HOST" in setting_names()
    assert "ENGRAM_PG_HOSTS" not in setting_names()
    assert "ENGRAM_PG_HOSTS" in set(ENGRAM_NAME.findall("ENGRAM_PG_HOSTS: postgres"))


# --- Dockerfile -------------------------------------------------------------------------------


def test_the_base_image_can_be_overridden(dockerfile: list[tuple[str, str]]) -> None:
    text = DOCKERFILE.read_text()
    first = next(line for line in text.splitlines() if line and not line.startswith("#"))
    assert first.startswith("ARG BASE_IMAGE="), "ARG BASE_IMAGE must come before every FROM"
    froms = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    assert len(froms) >= 2, "a builder stage and a runtime stage"
    assert all(arguments.startswith("${BASE_IMAGE} ") for arguments in froms), froms


def test_runtime_exposes_the_default_port(runtime: list[tuple[str, str]]) -> None:
    assert only(runtime, "EXPOSE").split() == [str(default_port())]


def test_runtime_serves_on_all_interfaces_as_a_non_root_user(
    runtime: list[tuple[str, str]],
) -> None:
    environment = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    assert "ENGRAM_HOST=0.0.0.0" in environment
    assert only(runtime, "USER") not in ("root", "0")
    assert only(runtime, "STOPSIGNAL") == "SIGTERM"
    assert json.loads(only(runtime, "ENTRYPOINT")) == ["engram"]
    # The default command must not be --insecure: an operator asks for that knowingly.
    command = json.loads(only(runtime, "CMD"))
    assert command[0] == "serve" and "--insecure" not in command


def test_the_sqlite_database_lives_in_the_volume(runtime: list[tuple[str, str]]) -> None:
    environment = " ".join(arguments for keyword, arguments in runtime if keyword == "ENV")
    match = re.search(r"ENGRAM_SQLITE_PATH=(\S+)", environment)
    assert match, "the runtime image should set ENGRAM_SQLITE_PATH"
    volumes = json.loads(only(runtime, "VOLUME"))
    database = PurePosixPath(match[1])
    assert any(database.is_relative_to(volume) for volume in volumes), (database, volumes)


def test_the_version_label_matches_the_package(runtime: list[tuple[str, str]]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    arguments = [arguments for keyword, arguments in runtime if keyword == "ARG"]
    assert f"VERSION={project['version']}" in arguments


def test_the_build_context_holds_what_the_wheel_needs(dockerfile: list[tuple[str, str]]) -> None:
    """Everything COPY'd from the context is in it, and it is all the wheel build needs."""
    copied: set[str] = set()
    for keyword, arguments in dockerfile:
        words = shlex.split(arguments)
        if keyword == "COPY" and not any(word.startswith("--from=") for word in words):
            copied.update(word.rstrip("/").removeprefix("./") for word in words[:-1])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {PurePosixPath(path).parts[0] for path in wheel["packages"]}
    needed |= {PurePosixPath(path).parts[0] for path in wheel.get("force-include", {})}
    assert needed <= copied, f"the builder does not copy {sorted(needed - copied)}"

    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:  # the last matching pattern wins
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.removeprefix("!").rstrip("/")):
                verdict = not negated
        return verdict

    for path in sorted(copied):
        assert (ROOT / path).exists(), f"COPY {path}: no such file"
        assert not ignored(path), f".dockerignore leaves {path} out of the build context"
    for path in (".venv", ".git", ".env", "tests"):
        assert ignored(path), f".dockerignore should leave {path} out of the build context"


def test_the_healthcheck_runs_on_any_base_image(runtime: list[tuple[str, str]]) -> None:
    command = healthcheck_command(runtime)
    # Debian's python3 has no `python`; the official images have both.
    assert command[:2] == ["python3", "-c"], command
    tree = ast.parse(command[2])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                __import__(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "ENGRAM_PORT"
        ):
            fallback = node.args[1]
            assert isinstance(fallback, ast.Constant), "ENGRAM_PORT needs the default port"
            assert fallback.value == str(default_port())


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (health_pb2.HealthCheckResponse.SERVING, 0),
        (health_pb2.HealthCheckResponse.NOT_SERVING, 1),
    ],
)
def test_the_healthcheck_follows_the_health_service(
    runtime: list[tuple[str, str]], status: int, exit_code: int
) -> None:
    """The HEALTHCHECK's code, run against a real health service on ENGRAM_PORT."""
    command = healthcheck_command(runtime)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    servicer.set("", status)
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, *command[1:]],
            env={**os.environ, "ENGRAM_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop(None)
    assert result.returncode == exit_code, result.stderr


# --- compose.yaml -----------------------------------------------------------------------------

SHELL = {"ENGRAM_ENCRYPTION_KEY": "test-key", "POSTGRES_PASSWORD": "test-password"}


def test_services_report_their_health(
    compose: dict[str, Any], runtime: list[tuple[str, str]]
) -> None:
    services: dict[str, Any] = compose["services"]
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        built_here = "build" in service  # the image's own HEALTHCHECK applies
        test = service.get("healthcheck", {}).get("test")
        if test is not None:
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
        if not one_shot:
            assert test is not None or built_here, f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                checked = services[dependency].get("healthcheck", {}).get("test")
                assert checked or "build" in services[dependency], (name, dependency)
            elif wanted == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", (name, dependency)
            else:
                pytest.fail(f"{name} waits for {dependency} with {wanted}")
    assert healthcheck_command(runtime)


def test_engram_services_run_on_postgresql_and_redis(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment the engram services get chooses PostgreSQL and Redis, as meant."""
    built = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(built) >= {"engram"}
    for name, service in built.items():
        with monkeypatch.context() as patch:
            for variable, value in service_environment(service, SHELL).items():
                patch.setenv(variable, value)
            settings = Settings()
        assert choose_database(settings).engine is DatabaseEngine.POSTGRESQL, name
        assert settings.resolved_redis_url is not None, name
        assert settings.encryption_key is not None, name
        assert settings.encryption_key.get_secret_value() == SHELL["ENGRAM_ENCRYPTION_KEY"]


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    """No password or key is written in the file; leaving one unset stops compose."""
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|KEY|SECRET|TOKEN", variable):
                match = INTERPOLATION.fullmatch(str(value))
                assert match and match["op"] == ":?", f"{name}.{variable} must be ${{NAME:?...}}"
                with pytest.raises(KeyError):
                    interpolate(str(value), {})


def test_grpc_is_published_on_loopback_by_default(compose: dict[str, Any]) -> None:
    ports = compose["services"]["engram"]["ports"]
    assert len(ports) == 1
    host_ip, _host_port, container_port = interpolate(ports[0], {}).rsplit(":", 2)
    assert host_ip == "127.0.0.1"
    assert container_port == str(default_port())
    assert interpolate(ports[0], {"PUBLISH_ADDRESS": "0.0.0.0"}).startswith("0.0.0.0:")


def test_stop_grace_outlasts_the_drain(compose: dict[str, Any]) -> None:
    """compose waits longer than the server's drain and grace before SIGKILL."""
    grace = compose["services"]["engram"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, f"stop_grace_period {grace!r}: write it in seconds, like 20s"
    fields = Settings.model_fields
    drain = fields["drain_delay_seconds"].default + fields["shutdown_grace_seconds"].default
    assert int(match[1]) > drain
