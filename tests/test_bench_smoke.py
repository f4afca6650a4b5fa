"""Smoke test of the benchmark: ``python bench/run.py --quick --json`` runs end to end.

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

REPO = Path(__file__).resolve().parents[1]

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


def test_quick_benchmark_prints_every_key() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout)
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
