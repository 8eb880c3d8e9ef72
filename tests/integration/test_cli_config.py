"""`engram config` shows the resolved settings, secrets redacted, and the engine choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def engram_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_", "LETTA_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", "config"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        cwd=REPO,
    )


def test_config_redacts_secrets_and_explains_the_choice() -> None:
    result = engram_config(
        {
            "LETTA_PG_URI": "postgresql://svc:s3cret-pw@db.internal:5432/agents?sslmode=require",
            "LETTA_ENCRYPTION_KEY": "super-secret-key",
            "LETTA_PG_POOL_SIZE": "40",
        }
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout
    assert "super-secret-key" not in result.stdout
    document = json.loads(result.stdout)
    assert document["database"]["engine"] == "postgresql"
    assert document["database"]["url"] == (
        "postgresql://svc:***@db.internal:5432/agents?sslmode=require"
    )
    assert "PG_URI" in document["database"]["reason"]
    assert document["settings"]["pg_pool_size"] == 40
    assert document["settings"]["encryption_key"] == "**********"


def test_config_reports_sqlite_by_default(tmp_path: Path) -> None:
    result = engram_config({"HOME": str(tmp_path)})
    document = json.loads(result.stdout)
    assert document["database"]["engine"] == "sqlite"
    assert document["database"]["url"].endswith(".engram/engram.db")


def test_config_explains_a_partial_configuration() -> None:
    result = engram_config({"ENGRAM_PG_HOST": "db"})
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert "ENGRAM_PG_DB" in document["database"]["error"]


def test_an_invalid_setting_is_named_without_a_traceback() -> None:
    """A Service called engram makes Kubernetes set ENGRAM_PORT=tcp://...; say so."""
    result = engram_config({"ENGRAM_PORT": "tcp://10.96.0.12:50051", "ENGRAM_PG_POOL_SIZE": "many"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ENGRAM_PG_POOL_SIZE" in result.stderr
    assert "ENGRAM_PORT" in result.stderr
    assert "enableServiceLinks" in result.stderr
