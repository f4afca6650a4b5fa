"""Smoke test of the benchmark: ``python bench/run.py --quick --json`` runs end to end
(on the default server binaries and on ``--bindir`` PostgreSQL 18).

It starts its own throwaway cluster, loads a small data set, runs every workload
in both forms and prints one JSON object. This checks that it does not crash and
that every documented key is there with a number; it is never a timing gate.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PG18_BIN = Path("/opt/agentapi-db/postgresql/18/bin")

REQUIRED_KEYS = (
    "rls_vs_filter_p50",
    "rls_vs_filter_p99",
    "library_vs_raw_p50",
    "scale_full_vs_1pct_p50",
    "cleanup_p99_ratio",
    "decrypt_tokens_per_s",
)
ROW_KEYS = (
    "organizations",
    "users",
    "user_sessions",
    "expired_sessions",
    "mcp_configurations",
    "encrypted_bearer_tokens",
    "mcp_oauth_tokens",
    "system_prompts",
    "audit_logs",
)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )


def _quick(*args: str) -> dict[str, Any]:
    result = _bench("--quick", "--json", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    data: dict[str, Any] = json.loads(result.stdout)
    _check_keys(data)
    return data


def test_quick_benchmark_prints_every_key() -> None:
    data = _quick()
    assert data["server_version_num"] >= 150000


def test_quick_benchmark_on_a_given_server_bindir() -> None:
    if not PG18_BIN.is_dir():
        pytest.fail(f"PostgreSQL 18 binaries missing in {PG18_BIN}: run scripts/install-deps.sh")
    data = _quick("--bindir", str(PG18_BIN))
    assert data["server_version_num"] // 10000 == 18
    assert data["server_version"].startswith("18.")


def test_a_bindir_without_a_server_is_refused(tmp_path: Path) -> None:
    result = _bench("--quick", "--json", "--bindir", str(tmp_path))
    assert result.returncode != 0 and result.stdout == ""
    assert f"--bindir {tmp_path}: no PostgreSQL server" in result.stderr
    assert "Traceback" not in result.stderr


def _check_keys(data: dict[str, Any]) -> None:
    for key in REQUIRED_KEYS:
        value = data[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), key
        assert math.isfinite(value) and value > 0, (key, value)
    rows = data["rows"]
    for key in ROW_KEYS:
        assert isinstance(rows[key], int) and rows[key] > 0, (key, rows)
    # A quarter of the sessions are expired, most MCP configs carry an encrypted token.
    assert 0.2 < rows["expired_sessions"] / rows["user_sessions"] < 0.3
    assert rows["encrypted_bearer_tokens"] > rows["mcp_configurations"] / 2
    # Both forms were checked to return the same rows, and no token was claimed twice.
    assert data["same_rows"]["w1"]["statements_compared"] > 0
    assert data["same_rows"]["w2"]["rows_compared"] > 0
    assert data["w3"]["double_claims"] == 0 and data["w3"]["claimed"] > 0
    assert data["cleanup"]["deleted"] == data["cleanup"]["expired_before"] > 0
