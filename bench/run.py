"""agentapi-db benchmark: RLS against hand-written tenant filters, at tenant scale.

    python bench/run.py [--quick] [--json] [--report] [--scale full|1pct|10pct|FRACTION]
                        [--database-url SUPERUSER_URL | --bindir PG_BIN_DIR] [--rounds N]

Without ``--database-url`` it starts a throwaway PostgreSQL cluster
(:class:`agentapi_db.cluster.LocalCluster`, ``fast=True``) and removes it at the
end; ``--bindir`` names the server binaries it runs (default: those of
:func:`agentapi_db.cluster.find_binaries`). ``psql`` and ``pgbench`` are found by
:mod:`agentapi_db.pgtools`: at least the server's major version. It applies
database/schema.sql, creates the bench logins (``bench_app``, a member of agentapi_app;
``bench_filter``, a login created here WITH BYPASSRLS, a member of agentapi_service,
which itself has no BYPASSRLS), loads data with bench/generate.sql (secrets sealed
in this process under per-organization data keys), makes a context key and one
signed context token per user (bench.context_tokens), and measures:

* workloads 1 (session start) and 2 (admin pages) in form (a), RLS, and form (b),
  hand-written filters, with pgbench (``-M prepared``), the forms interleaved
  A B A B over several rounds; medians of the per-round p50 and p99; the same
  rows checked for both forms; the server CPU per transaction as well;
* the same at the small scale (1% of the big one) for the scaling ratio;
* workload 3 (refresh claim, 2 concurrent workers) and a double-claim check;
* workload 1 through the agentapi_db library against raw psycopg (same SQL, both
  decrypting in this process), and against raw psycopg decrypting in SQL (the old path);
* cleanup under load: batched deletes of expired sessions while workload 1 runs;
* token decryption throughput through the library (in this process, one thread),
  and in SQL on one backend for comparison.

``--quick`` is a small smoke run (well under a minute): its numbers mean little.
``--report`` writes bench/results.json, the results table in bench/README.md
and bench/latency_vs_scale.png. ``--report-only`` rewrites the last two from
bench/results.json without running anything.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from generate import Scale, generate, scale_named  # noqa: E402
from pgscript import draw, parse_script, run_script, server_cpu_per_tx  # noqa: E402

from agentapi_db import identity  # noqa: E402
from agentapi_db import queries as Q  # noqa: E402
from agentapi_db.cluster import LocalCluster, probe_binaries  # noqa: E402
from agentapi_db.context import ContextKey  # noqa: E402
from agentapi_db.context_admin import create_key  # noqa: E402
from agentapi_db.pgtools import find_tool  # noqa: E402
from agentapi_db.stats import tune_tenant_statistics  # noqa: E402

SQL_DIR = HERE / "sql"
RESULTS_JSON = HERE / "results.json"
README = HERE / "README.md"
PLOT = HERE / "latency_vs_scale.png"
SCHEMA_SQL = REPO / "database" / "schema.sql"

APP_LOGIN = "bench_app"
FILTER_LOGIN = "bench_filter"

# ---------------------------------------------------------------------------- SQL
# The one place for this module's own SQL (workload SQL lives in bench/sql/*.sql).

_SQL_ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
_SQL_RESET_CLAIMS = (
    "UPDATE public.mcp_oauth_tokens SET refresh_claimed_until = NULL, refresh_claimed_by = NULL"
    " WHERE refresh_claimed_until IS NOT NULL"
)
_SQL_CLEANUP_BATCH = """
DELETE FROM public.user_sessions
 WHERE id IN (SELECT id FROM public.user_sessions
               WHERE expires_at <= now()
               ORDER BY expires_at
               LIMIT %s
                 FOR UPDATE SKIP LOCKED)
"""
_SQL_MAX_LOCK_WAIT = """
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)), 0)::float8
  FROM pg_catalog.pg_locks
 WHERE NOT granted AND waitstart IS NOT NULL
"""
_SQL_DECRYPT_ALL = """
SELECT count(public.decrypt_token(bearer_token, %s))
  FROM public.mcp_configurations
 WHERE bearer_token IS NOT NULL
"""
# The library's configuration list as it was before issue 12: bearer tokens
# decrypted in SQL with the master key bound as a parameter (decrypt_token follows
# the organization's data key, read under RLS). Only for the "old path" comparison.
_MCP_BEARER_CIPHERTEXT = "CASE WHEN %(decrypt)s THEN v.bearer_token END"
_SQL_MCP_LIST_EFFECTIVE_SQL_DECRYPT = Q.MCP_LIST_EFFECTIVE.replace(
    _MCP_BEARER_CIPHERTEXT,
    "CASE WHEN %(decrypt)s THEN public.decrypt_token(v.bearer_token, %(key)s) END",
)
if _MCP_BEARER_CIPHERTEXT not in Q.MCP_LIST_EFFECTIVE:
    raise RuntimeError("queries.MCP_LIST_EFFECTIVE changed shape: update the bench's old path")
_SQL_BEARER_ALL = (
    "SELECT bearer_token FROM public.mcp_configurations WHERE bearer_token IS NOT NULL"
)
_SQL_DECRYPT_SAMPLE = """
SELECT bearer_token, public.decrypt_token(bearer_token, %s)
  FROM public.mcp_configurations
 WHERE bearer_token IS NOT NULL
 ORDER BY id
 LIMIT 200
"""
# One signed context token per benchmark user, for the pgbench scripts of form (a)
# (pgbench cannot compute an HMAC); read by their context statement.
_SQL_CONTEXT_TOKENS = (
    "CREATE TABLE bench.context_tokens (u int PRIMARY KEY, user_id uuid NOT NULL,"
    " token text NOT NULL)"
)
_SQL_COPY_CONTEXT_TOKENS = "COPY bench.context_tokens (u, user_id, token) FROM STDIN"
_SQL_GRANT_CONTEXT_TOKENS = "GRANT SELECT ON bench.context_tokens TO {}"
_SQL_ANALYZE_CONTEXT_TOKENS = "ANALYZE bench.context_tokens"
# The extra pair "bare app.user_id" (no context key, as before issue 14): the keys are
# moved aside and back by the superuser, server-side (no key travels in a statement).
_SQL_CONTEXT_KEYS_ASIDE = """
CREATE TABLE IF NOT EXISTS bench.context_keys_aside (LIKE agentapi_auth.context_keys);
REVOKE ALL ON bench.context_keys_aside FROM PUBLIC;
INSERT INTO bench.context_keys_aside SELECT * FROM agentapi_auth.context_keys;
DELETE FROM agentapi_auth.context_keys
"""
_SQL_CONTEXT_KEYS_BACK = """
INSERT INTO agentapi_auth.context_keys SELECT * FROM bench.context_keys_aside;
DELETE FROM bench.context_keys_aside
"""
_SQL_CONTEXT_KEY_COUNT = "SELECT count(*) FROM agentapi_auth.context_keys"
_SQL_NO_PARALLEL = "SET max_parallel_workers_per_gather = 0"
_SQL_EXPIRED = "SELECT count(*) FROM public.user_sessions WHERE expires_at <= now()"
_SQL_SERVER_VERSION = "SHOW server_version"
# A server's working set is hot; a bulk load leaves it in the OS cache only (bulk
# writes go through a small ring of shared buffers). Read every table and index
# of the schema into shared buffers before measuring, for both forms alike.
# Workload 1 appends audit events to the current month's partition while the other
# workloads run; with the default analyze threshold (10 % of a ~170,000-row
# partition) its statistics went stale for minutes and, until autovacuum analyzed it,
# admin pages of the largest tenant took ~4.5 ms instead of ~0.4 ms in both forms.
# Steady state on a busy server is fresh statistics: analyze audit partitions after
# 0.5 % of their rows change.
_SQL_AUDIT_PARTITIONS = """
SELECT c.relname
  FROM pg_catalog.pg_inherits AS i
  JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'public.audit_logs'::regclass
"""
_SQL_ANALYZE_OFTEN = (
    "ALTER TABLE {} SET (autovacuum_analyze_scale_factor = 0.005,"
    " autovacuum_analyze_threshold = 200)"
)
_SQL_CHECKPOINT = "CHECKPOINT"
_SQL_ANALYZE_AUDIT = "ANALYZE public.audit_logs"
_SQL_PREWARM_EXTENSION = "CREATE EXTENSION IF NOT EXISTS pg_prewarm SCHEMA bench"
_SQL_PREWARM = """
SELECT coalesce(sum(bench.pg_prewarm(c.oid)), 0)
  FROM pg_catalog.pg_class AS c
 WHERE c.relnamespace IN ('public'::regnamespace, 'bench'::regnamespace)
   AND c.relkind IN ('r', 'i', 'm')
"""


# ---------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def url_with(base: str, **parts: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(base).items() if v is not None}
    params.update(parts)
    return make_conninfo("", **params)


@dataclass
class Server:
    """Where the benchmark runs: a superuser conninfo and, maybe, our own cluster."""

    superuser: str
    cluster: LocalCluster | None = None
    tmp: Path | None = None
    login_password: str = field(default_factory=lambda: secrets.token_hex(16))
    major: int = 0
    """The server's major version (set once connected); client tools must be as new."""

    def tool(self, name: str) -> str:
        return str(find_tool(name, self.major).path)

    def url(self, dbname: str, login: str | None = None) -> str:
        if login is None:
            return url_with(self.superuser, dbname=dbname)
        return url_with(self.superuser, dbname=dbname, user=login, password=self.login_password)

    def libpq_env(self, dbname: str, login: str) -> dict[str, str]:
        params = conninfo_to_dict(self.url(dbname, login))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env |= {
            "PGHOST": str(params.get("host", "127.0.0.1")),
            "PGPORT": str(params.get("port", "5432")),
            "PGDATABASE": dbname,
            "PGUSER": login,
            "PGPASSWORD": self.login_password,
        }
        return env


@contextlib.contextmanager
def server_for(args: argparse.Namespace, big: Scale) -> Iterator[Server]:
    if args.database_url:
        yield Server(superuser=args.database_url)
        return
    binaries = None
    if args.bindir:
        binaries = probe_binaries(Path(args.bindir))
        if binaries is None:
            raise SystemExit(f"--bindir {args.bindir}: no PostgreSQL server (postgres, initdb, "
                             "pg_ctl) there")
    tmp = Path(tempfile.mkdtemp(prefix="agentapi-bench-"))
    tmp.chmod(0o755)
    shared = "4GB" if big.sessions >= 500_000 else "256MB"
    cluster = LocalCluster(
        tmp / "cluster",
        fast=True,
        settings={
            "shared_buffers": f"'{shared}'",
            "max_wal_size": "'8GB'",
            "checkpoint_timeout": "'30min'",
            "log_lock_waits": "on",
            "deadlock_timeout": "'100ms'",
            "jit": "off",
            "autovacuum_naptime": "'10s'",
        },
        binaries=binaries,
    )
    try:
        cluster.init()
        cluster.start()
        yield Server(superuser=cluster.dsn(), cluster=cluster, tmp=tmp)
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_logins(server: Server) -> None:
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        for login, group, bypass in (
            (APP_LOGIN, "agentapi_app", False),
            (FILTER_LOGIN, "agentapi_service", True),
        ):
            verb = "ALTER" if conn.execute(_SQL_ROLE_EXISTS, (login,)).fetchone() else "CREATE"
            attrs = "LOGIN NOSUPERUSER BYPASSRLS" if bypass else "LOGIN NOSUPERUSER NOBYPASSRLS"
            conn.execute(
                sql.SQL("{} ROLE {} " + attrs + " PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(login), sql.Literal(server.login_password)
                )
            )
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login))
            )
            # Both forms reuse their prepared plans. Under the default (auto), the
            # hand-filtered statements of a known large tenant are re-planned on every
            # execution (a custom plan looks cheaper), which slows the baseline, not RLS.
            conn.execute(
                sql.SQL("ALTER ROLE {} SET plan_cache_mode = force_generic_plan").format(
                    sql.Identifier(login)
                )
            )


def psql(server: Server, dbname: str, path: Path) -> None:
    tool = server.tool("psql")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        [tool, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url(dbname), "-f", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql -f {path} failed:\n{result.stdout}{result.stderr}")


def create_database(server: Server, scale: Scale, key: str) -> tuple[str, dict[str, int], float]:
    name = f"agentapi_bench_{re.sub(r'[^a-z0-9]', '_', scale.name.lower())}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    psql(server, name, SCHEMA_SQL)
    mode = identity_mode_of(server, name)
    if mode == "invalid":
        raise RuntimeError(f"{name}: the identity helpers fail the identity_helpers lint")
    _identity_default[name] = _identity_now[name] = mode
    log(f"{name}: identity helpers {mode}")
    ensure_logins(server)
    counts, seconds = generate(server.url(name), scale, key)
    _context_keys[name] = make_context_tokens(server, name, scale)
    _context_now[name] = "token"
    with psycopg.connect(server.url(name), autocommit=True) as conn:
        started = time.perf_counter()
        # What an operator runs after a bulk load: agentapi-db stats --tune.
        tuned = tune_tenant_statistics(conn)
        log(
            f"tune_tenant_statistics in {time.perf_counter() - started:.1f}s: "
            + ", ".join(f"{t.table} {t.effective_tenants}" for t in tuned)
        )
        for (partition,) in conn.execute(_SQL_AUDIT_PARTITIONS).fetchall():
            conn.execute(sql.SQL(_SQL_ANALYZE_OFTEN).format(sql.Identifier("public", partition)))
        conn.execute(_SQL_PREWARM_EXTENSION)
        conn.execute(_SQL_PREWARM)
        conn.execute(_SQL_CHECKPOINT)
    return name, counts.as_dict(), seconds


CONTEXT_TOKEN_TTL = 12 * 3600
"""Seconds the precomputed context tokens stay valid (the server allows at most a day)."""


def bench_user_ids(users: int) -> Iterator[tuple[int, UUID]]:
    """Benchmark user u and its id, md5('u' || u)::uuid as in generate.sql."""
    for u in range(1, users + 1):
        yield u, UUID(hashlib.md5(f"u{u}".encode()).hexdigest())  # noqa: S324 - ids, not security


def make_context_tokens(server: Server, dbname: str, scale: Scale) -> ContextKey:
    """A context key for ``dbname`` (made in the server, as ``agentapi-db context-key
    create`` does) and one token per benchmark user in bench.context_tokens.

    Once the key exists, ``app.user_id`` counts only with a valid ``app.context_token``
    (issue 14). The library signs in-process per transaction; pgbench cannot compute
    an HMAC, so its scripts read the user's token in their one context statement.
    """
    with psycopg.connect(server.url(dbname)) as conn:
        key = create_key(conn)
    now = time.time()
    with psycopg.connect(server.url(dbname)) as conn:
        conn.execute(_SQL_CONTEXT_TOKENS)
        with conn.cursor().copy(_SQL_COPY_CONTEXT_TOKENS) as copy:
            for u, uid in bench_user_ids(scale.users):
                copy.write_row((u, uid, key.sign(uid, ttl=CONTEXT_TOKEN_TTL, now=now)))
        conn.execute(sql.SQL(_SQL_GRANT_CONTEXT_TOKENS).format(sql.Identifier(APP_LOGIN)))
        conn.execute(_SQL_ANALYZE_CONTEXT_TOKENS)
    return key


# The context key of each database, and whether its keys are in place ("token") or
# moved aside ("bare": the bare app.user_id counts, as before issue 14).
_context_keys: dict[str, ContextKey] = {}
_context_now: dict[str, str] = {}


def use_context(server: Server, dbname: str, mode: str | None) -> None:
    """Put the context keys of ``dbname`` in place (``token``, the default) or aside."""
    mode = mode or "token"
    if _context_now.get(dbname, "token") == mode:
        return
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        conn.execute(_SQL_CONTEXT_KEYS_BACK if mode == "token" else _SQL_CONTEXT_KEYS_ASIDE)
        row = conn.execute(_SQL_CONTEXT_KEY_COUNT).fetchone()
    if (row is not None and row[0] > 0) != (mode == "token"):
        raise RuntimeError(f"{dbname}: context keys are not {mode}")
    _context_now[dbname] = mode


# ---------------------------------------------------------------------------- pgbench


@dataclass
class Case:
    label: str
    dbname: str
    script: str
    login: str
    variables: dict[str, str]
    # The identity helpers to run with ("cache" or "portable"); None: the database's
    # own, the cache when the server has ext/agentapi_identity (see use_identity()).
    identity: str | None = None
    # "bare": the context keys moved aside, so the bare app.user_id counts (the
    # context as before issue 14); None: the authenticated context (see use_context()).
    context: str | None = None


# The identity helpers each database was created with, and has now.
_identity_default: dict[str, str] = {}
_identity_now: dict[str, str] = {}


# The identity helpers' implementation (database/schema.sql section 5): the identity
# cache of ext/agentapi_identity when the server has it, else the portable lookups.
# The bench measures form (a) in both, switching one database back and forth with
# the operator's path (agentapi_db.identity, as agentapi-db identity-cache does).
def identity_mode_of(server: Server, dbname: str) -> str:
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        return identity.identity_mode(conn).mode


def use_identity(server: Server, dbname: str, mode: str | None) -> None:
    """Install the ``mode`` identity helpers in ``dbname`` unless it has them already."""
    mode = mode or _identity_default[dbname]
    if _identity_now.get(dbname) == mode:
        return
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        now = identity.use_identity_cache(conn, mode == "cache").mode
    if now != mode:
        raise RuntimeError(f"{dbname}: identity helpers are {now}, not {mode}")
    _identity_now[dbname] = mode


def pgbench(
    server: Server,
    case: Case,
    *,
    transactions: int | None = None,
    seconds: int | None = None,
    clients: int = 1,
    ends: list[float] | None = None,
) -> list[float]:
    """Run pgbench once; the per-transaction latencies in milliseconds.

    With ``ends``, also appends each transaction's end time (Unix seconds) to it,
    in the same order as the latencies.
    """
    tool = server.tool("pgbench")
    use_identity(server, case.dbname, case.identity)
    use_context(server, case.dbname, case.context)
    with tempfile.TemporaryDirectory(prefix="agentapi-pgbench-") as logdir:
        argv = [
            tool,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-f",
            str(SQL_DIR / case.script),
            "--log",
            f"--log-prefix={logdir}/tx",
        ]
        argv += ["-t", str(transactions)] if transactions else ["-T", str(seconds or 10)]
        for name, value in case.variables.items():
            argv += ["-D", f"{name}={value}"]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
            env=server.libpq_env(case.dbname, case.login),
        )
        if result.returncode != 0 or "aborted" in result.stderr:
            redacted = result.stderr.replace(case.variables.get("key", "\0"), "<key>")
            raise RuntimeError(
                f"pgbench {case.label} failed (exit {result.returncode}):\n{redacted}"
            )
        latencies: list[float] = []
        for path in Path(logdir).glob("tx*"):
            for line in path.read_text(encoding="ascii").splitlines():
                fields = line.split()
                if len(fields) >= 6:
                    latencies.append(int(fields[2]) / 1000.0)
                    if ends is not None:
                        ends.append(int(fields[4]) + int(fields[5]) / 1e6)
    return latencies


@dataclass
class Stats:
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)

    def add(self, latencies: Sequence[float]) -> None:
        self.p50.append(percentile(latencies, 0.50))
        self.p99.append(percentile(latencies, 0.99))

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": statistics.median(self.p50),
            "p99_ms": statistics.median(self.p99),
            "rounds": len(self.p50),
        }


def interleaved(
    server: Server, cases: list[Case], rounds: int, transactions: int
) -> dict[str, Stats]:
    """Each round runs every case once, in the given order on even rounds and reversed
    on odd ones (so the members of a compared pair, listed side by side, run back to
    back, A B then B A); per-round p50/p99 per case."""
    stats = {c.label: Stats() for c in cases}
    for c in cases:  # warm-up: caches, prepared plans, the first round's bias
        pgbench(server, c, transactions=max(50, transactions // 5))
    for dbname in sorted({c.dbname for c in cases}):  # statistics that include the warm-up
        with psycopg.connect(server.url(dbname), autocommit=True) as conn:
            conn.execute(_SQL_ANALYZE_AUDIT)
    for r in range(rounds):
        order = cases[::-1] if r % 2 else cases
        for c in order:
            stats[c.label].add(pgbench(server, c, transactions=transactions))
        log(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{c.label} {stats[c.label].p50[-1]:.3f}" for c in cases)
        )
    return stats


# ---------------------------------------------------------------------------- checks


def same_rows(
    server: Server,
    dbname: str,
    form_a: str,
    form_b: str,
    pairs: list[tuple[int, int]],
    variables: dict[str, Any],
    samples: int,
) -> dict[str, int]:
    """Run both forms for the same random draws; compare the rows of statement pairs."""
    sa, sb = parse_script(SQL_DIR / form_a), parse_script(SQL_DIR / form_b)
    checked = rows = 0
    with (
        psycopg.connect(server.url(dbname, APP_LOGIN), autocommit=True) as ca,
        psycopg.connect(server.url(dbname, FILTER_LOGIN), autocommit=True) as cb,
    ):
        for i in range(samples):
            va = dict(variables)
            draw(sa, va, random.Random(i))
            vb = dict(variables)
            draw(sb, vb, random.Random(i))
            ra, rb = run_script(ca, sa, va), run_script(cb, sb, vb)
            for ia, ib in pairs:
                if ra[ia] != rb[ib]:
                    raise AssertionError(
                        f"{form_a} and {form_b} differ (draw {i}, statements {ia}/{ib}): "
                        f"{len(ra[ia])} rows against {len(rb[ib])}"
                    )
                checked += 1
                rows += len(ra[ia])
    return {"statements_compared": checked, "rows_compared": rows}


# ---------------------------------------------------------------------------- library


def library_vs_raw(
    server: Server,
    dbname: str,
    key: str,
    context_key: ContextKey,
    users: int,
    rounds: int,
    iterations: int,
) -> dict[str, float]:
    """Workload 1 through the library against raw psycopg, both decrypting in-process,
    and against raw psycopg decrypting in SQL (the path before issue 12)."""
    from psycopg.types.json import Jsonb

    from agentapi_db import Database, EncryptionKey
    from agentapi_db.crypto import KeyRing
    from agentapi_db.ops._secrets import drive, open_values

    url = server.url(dbname, APP_LOGIN)
    ekey = EncryptionKey.parse(key)
    ring = KeyRing(ekey)  # raw psycopg's own ring: it learns the data keys as the library does
    rng = random.Random(7)
    ids = dict(bench_user_ids(users))

    def session_id(u: int) -> UUID:
        return UUID(hashlib.md5(f"s{u}".encode()).hexdigest())  # noqa: S324 - ids, not security

    def via_library(db: Any, u: int) -> list[str | None]:
        sid = session_id(u)
        with db.as_user(ids[u]) as tx:
            tx.sessions.get(sid)
            configs = tx.mcp.list_effective(decrypt=True)
            prompts = tx.prompts.list_effective()
            tx.audit.log(
                "session.start",
                "user_session",
                resource_id=sid,
                ip_address="127.0.0.1",
                user_agent="bench",
            )
        tokens = [None if c.bearer_token is None else c.bearer_token.get_secret_value()
                  for c in configs]
        return [*tokens, str(len(prompts))]

    def via_raw(conn: psycopg.Connection[Any], u: int, in_sql: bool) -> list[str | None]:
        uid, sid = ids[u], session_id(u)
        with conn.pipeline():  # BEGIN and the context in one round trip, as the library
            conn.execute(Q.BEGIN)
            conn.execute(
                Q.CONTEXT_AS_USER, {"user_id": str(uid), "token": context_key.sign(uid)}
            )
        conn.execute(Q.SESSION_GET, {"id": sid}).fetchone()
        if in_sql:
            rows = conn.execute(
                _SQL_MCP_LIST_EFFECTIVE_SQL_DECRYPT, {"user_id": uid, "decrypt": True, "key": key}
            ).fetchall()
            tokens: list[str | None] = [r[-1] for r in rows]  # bearer_token is the last column
        else:
            rows = conn.execute(
                Q.MCP_LIST_EFFECTIVE, {"user_id": uid, "decrypt": True}
            ).fetchall()
            tokens = drive(conn, open_values(ring, [r[-1] for r in rows]))
        prompts = conn.execute(Q.PROMPT_EFFECTIVE, {"user_id": uid}).fetchall()
        conn.execute(
            Q.AUDIT_LOG,
            {
                "user_id": None,
                "organization_id": None,
                "action": "session.start",
                "resource_type": "user_session",
                "resource_id": str(sid),
                "details": Jsonb({}),
                "ip_address": "127.0.0.1",
                "user_agent": "bench",
                "success": True,
                "error_message": None,
            },
        ).fetchone()
        conn.execute(Q.COMMIT)
        return [*tokens, str(len(prompts))]

    lib_stats, raw_stats, sql_stats = Stats(), Stats(), Stats()
    with (
        Database(url, key=ekey, context_key=context_key, min_size=1, max_size=1) as db,
        psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn,
    ):
        for u in (1, 2, 3, users):  # the same plaintexts on all three paths
            lib, raw, in_sql = via_library(db, u), via_raw(conn, u, False), via_raw(conn, u, True)
            if not lib == raw == in_sql or not any(t is not None for t in lib[:-1]):
                raise AssertionError(
                    "the library, raw psycopg and the in-SQL decryption disagree for user "
                    f"{u} (or no bearer token came back)"
                )
        runners: list[tuple[Callable[[int], object], Stats]] = [
            (lambda u: via_library(db, u), lib_stats),
            (lambda u: via_raw(conn, u, False), raw_stats),
            (lambda u: via_raw(conn, u, True), sql_stats),
        ]
        for r in range(rounds):
            for fn, stats in runners[::-1] if r % 2 else runners:
                lat = []
                for _ in range(iterations):
                    u = rng.randint(1, users)
                    t0 = time.perf_counter()
                    fn(u)
                    lat.append((time.perf_counter() - t0) * 1000)
                stats.add(lat)
    lib_s, raw_s, sql_s = lib_stats.summary(), raw_stats.summary(), sql_stats.summary()
    return {
        "library_p50_ms": lib_s["p50_ms"],
        "raw_p50_ms": raw_s["p50_ms"],
        "library_p99_ms": lib_s["p99_ms"],
        "raw_p99_ms": raw_s["p99_ms"],
        "library_vs_raw_p50": lib_s["p50_ms"] / raw_s["p50_ms"],
        "raw_sql_decrypt_p50_ms": sql_s["p50_ms"],
        "raw_sql_decrypt_p99_ms": sql_s["p99_ms"],
        "library_vs_sql_decrypt_p50": lib_s["p50_ms"] / sql_s["p50_ms"],
        "inprocess_vs_sql_decrypt_p50": raw_s["p50_ms"] / sql_s["p50_ms"],
    }


# ---------------------------------------------------------------------------- workload 3


def claim_check(
    server: Server, dbname: str, key: str, workers: int = 2, claims: int = 5
) -> dict[str, int]:
    """Workers claim concurrently through agentapi_db.refresh; no token twice."""
    from datetime import timedelta

    from agentapi_db import EncryptionKey
    from agentapi_db.refresh import claim_expiring

    ekey = EncryptionKey.parse(key)
    got: list[list[str]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(i: int) -> None:
        try:
            with psycopg.connect(server.url(dbname, FILTER_LOGIN)) as conn:
                barrier.wait()
                for _ in range(claims):
                    for c in claim_expiring(
                        conn, worker_id=f"bench-{i}", key=ekey, within=timedelta(days=1), limit=100
                    ):
                        got[i].append(str(c.id))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    every = [x for g in got for x in g]
    return {"claimed": len(every), "double_claims": len(every) - len(set(every))}


def reset_claims(server: Server, dbname: str) -> None:
    with psycopg.connect(server.url(dbname), autocommit=True) as conn:
        conn.execute(_SQL_RESET_CLAIMS)


# ---------------------------------------------------------------------------- cleanup


def cleanup_under_load(server: Server, case: Case, seconds: int, batch: int) -> dict[str, float]:
    """Workload 1's p99 while expired sessions are deleted in batches, and without.

    One pgbench run of ``seconds``; the deletes start a third of the way in. The
    transactions that ended while batches were being deleted are "during", the rest
    of the same run "without" (a separate run just before is reported as well).
    """
    base = pgbench(server, case, seconds=seconds)
    with psycopg.connect(server.url(case.dbname), autocommit=True) as conn:
        row = conn.execute(_SQL_EXPIRED).fetchone()
        expired_before = int(row[0]) if row else 0
    stop = threading.Event()
    deleted = [0]
    batches = [0]
    max_wait = [0.0]
    delete_seconds = [0.0]
    window = [0.0, 0.0]

    def deleter() -> None:
        with psycopg.connect(server.url(case.dbname, FILTER_LOGIN), autocommit=True) as conn:
            if stop.wait(seconds / 3):
                return
            t0 = time.perf_counter()
            window[0] = time.time()
            while not stop.is_set():
                n = conn.execute(_SQL_CLEANUP_BATCH, (batch,)).rowcount
                if n <= 0:
                    break
                deleted[0] += n
                batches[0] += 1
                time.sleep(0.005)  # as `agentapi-db sessions cleanup`: back to back
            delete_seconds[0] = time.perf_counter() - t0
            window[1] = time.time()

    def sampler() -> None:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(_SQL_MAX_LOCK_WAIT).fetchone()
                max_wait[0] = max(max_wait[0], float(row[0]) if row else 0.0)
                time.sleep(0.02)

    threads = [threading.Thread(target=deleter), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    ends: list[float] = []
    try:
        whole = pgbench(server, case, seconds=seconds, ends=ends)
    finally:
        stop.set()
        for t in threads:
            t.join()
    pairs = list(zip(whole, ends, strict=True))
    during = [lat for lat, end in pairs if window[0] <= end <= window[1]]
    outside = [lat for lat, end in pairs if not window[0] <= end <= window[1]]
    if not during:
        raise RuntimeError("no workload-1 transaction ended while the cleanup ran")
    # The baseline is the same run's transactions outside the cleanup window: the same
    # minute on a shared machine. The separate run before is reported too.
    separate = base
    base = outside if len(outside) >= 100 else outside + separate
    p99_base, p99_during = percentile(base, 0.99), percentile(during, 0.99)
    return {
        "p99_without_ms": p99_base,
        "p99_during_ms": p99_during,
        "p50_without_ms": percentile(base, 0.5),
        "transactions_without": len(base),
        "p99_separate_run_ms": percentile(separate, 0.99),
        "p50_during_ms": percentile(during, 0.5),
        "transactions_during": len(during),
        "cleanup_p99_ratio": p99_during / p99_base,
        "expired_before": expired_before,
        "deleted": deleted[0],
        "batches": batches[0],
        "batch_size": batch,
        "delete_seconds": delete_seconds[0],
        "max_lock_wait_s": max_wait[0],
    }


# ---------------------------------------------------------------------------- decrypt


def decrypt_throughput(
    server: Server, dbname: str, key: str, min_cpu_s: float = 1.0
) -> dict[str, Any]:
    """Decrypt every bearer token through the library, in this process, on one thread.

    The ciphertexts are read once; the library's ``open_values`` learns the
    organizations' data keys (one statement) on a first pass, and the timed passes
    open every value from the key ring's cache, as a long-running application does.
    The figure is tokens per second of this thread's CPU time (and of wall time) of
    the median pass; passes repeat until they add up to ``min_cpu_s`` (at least 3),
    so that a small data set (--quick: ~1,400 tokens) still gives a steady figure.
    """
    from agentapi_db import EncryptionKey
    from agentapi_db.crypto import KeyRing
    from agentapi_db.ops._secrets import drive, open_values

    ring = KeyRing(EncryptionKey.parse(key))
    with psycopg.connect(server.url(dbname, FILTER_LOGIN), autocommit=True) as conn:
        values: list[str | None] = [r[0] for r in conn.execute(_SQL_BEARER_ALL).fetchall()]
        drive(conn, open_values(ring, values))  # learns the data keys
        # The library and the SQL function open the same values to the same tokens.
        for ct, plain in conn.execute(_SQL_DECRYPT_SAMPLE, (key,)).fetchall():
            if ring.open(ct) != plain:
                raise AssertionError("the library and decrypt_token disagree on a token")
        passes: list[tuple[float, float]] = []  # (cpu, wall) seconds
        while len(passes) < 3 or sum(c for c, _ in passes) < min_cpu_s:
            cpu0, t0 = time.thread_time(), time.perf_counter()
            opened = drive(conn, open_values(ring, values))
            passes.append((time.thread_time() - cpu0, time.perf_counter() - t0))
            if sum(1 for v in opened if v is not None) != len(values):
                raise AssertionError("a bearer token did not open")
    cpu = statistics.median(c for c, _ in passes)
    wall = statistics.median(w for _, w in passes)
    return {**_rates(len(values), wall, cpu), "where": "client", "passes": len(passes)}


def _rates(n: int, wall: float, cpu: float) -> dict[str, float]:
    return {
        "tokens": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_s_wall": n / wall,
        "tokens_per_s_cpu": n / cpu if cpu else float("nan"),
    }


def decrypt_throughput_sql(server: Server, dbname: str, key: str) -> dict[str, float]:
    """Decrypt every bearer token in SQL (decrypt_token with the master key) in one
    backend, no parallel workers: the path before issue 12, for comparison. Each value
    now also costs a look-up and an unwrap of its organization's data key."""
    from pgscript import backend_cpu_ns

    with psycopg.connect(server.url(dbname, FILTER_LOGIN), autocommit=True) as conn:
        conn.execute(_SQL_NO_PARALLEL)
        pid = conn.info.backend_pid
        conn.execute(_SQL_DECRYPT_ALL, (key,))  # warm
        cpu0, t0 = backend_cpu_ns(pid), time.perf_counter()
        row = conn.execute(_SQL_DECRYPT_ALL, (key,)).fetchone()
        wall, cpu = time.perf_counter() - t0, (backend_cpu_ns(pid) - cpu0) / 1e9
    return _rates(int(row[0]) if row else 0, wall, cpu)


# ---------------------------------------------------------------------------- main run


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def w1_vars(scale: Scale) -> dict[str, str]:
    return {"nusers": str(scale.users)}


def largest_org_users(scale: Scale) -> int:
    """Users of organization 1, the largest (users 1..n; generate.sql's formula)."""
    n = 0
    while n < scale.users and 1 + math.floor(scale.orgs * (n / scale.users) ** 3) == 1:
        n += 1
    return n


def w2_vars(scale: Scale) -> dict[str, str]:
    """Workload 2 acts as an admin of the largest organization (users 50, 100, ...):
    the most demanding tenant, and one whose pages are full at every scale, so that
    the scales compare the same work."""
    return {
        "nusers": str(scale.users),
        "norgs": str(scale.orgs),
        "nadmins": str(max(1, largest_org_users(scale) // 50)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    big = scale_named(args.scale or ("1pct" if quick else "full"))
    small = scale_named(str(big.fraction / 100)) if not quick else scale_named("0.002")
    small = Scale(
        "1pct-of-" + big.name if not quick else "quick-small",
        small.orgs,
        small.users,
        small.sessions,
        small.audit_events,
    )
    rounds = args.rounds or (2 if quick else 15)
    tx = 60 if quick else 600
    key = secrets.token_hex(32)
    out: dict[str, Any] = {
        "quick": quick,
        "machine": machine(),
        "scales": {"big": big.name, "small": small.name},
        "rows_by_scale": {},
    }
    started = time.perf_counter()
    with server_for(args, big) as server:
        with psycopg.connect(server.url("postgres")) as conn:
            row = conn.execute(_SQL_SERVER_VERSION).fetchone()
            out["machine"]["postgresql"] = str(row[0]) if row else "?"
            out["server_version_num"] = conn.info.server_version
            server.major = conn.info.server_version // 10000
        out["server_version"] = out["machine"]["postgresql"]
        dbs: dict[str, str] = {}
        rows: dict[str, dict[str, int]] = {}
        load: dict[str, float] = {}
        mid = None if quick else Scale("10pct-of-" + big.name, *_tenth(big))
        if mid is not None:
            out["scales"]["mid"] = mid.name
        for scale in [small, big] + ([mid] if mid is not None else []):
            log(f"loading {scale.name}: {scale}")
            dbs[scale.name], rows[scale.name], load[scale.name] = create_database(
                server, scale, key
            )
            log(f"loaded {scale.name} in {load[scale.name]:.1f}s: {rows[scale.name]}")
        out["rows"] = rows[big.name]
        out["rows_small"] = rows[small.name]
        out["rows_by_scale"] = rows
        out["load_seconds"] = load

        # Same rows in both forms (w1: session, configs, prompts; w2: both pages).
        out["same_rows"] = {
            "w1_library_sql": same_rows(
                server,
                dbs[big.name],
                "w1_libsql.sql",
                "w1_filter.sql",
                [(2, 1), (3, 2), (4, 3)],
                w1_vars(big),
                10 if quick else 30,
            ),
            "w1": same_rows(
                server,
                dbs[big.name],
                "w1_rls.sql",
                "w1_filter.sql",
                [(2, 1), (3, 2), (4, 3)],
                w1_vars(big),
                10 if quick else 50,
            ),
            "w2": same_rows(
                server,
                dbs[big.name],
                "w2_rls.sql",
                "w2_filter.sql",
                [(2, 1), (3, 2)],
                w2_vars(big),
                10 if quick else 50,
            ),
        }
        # Form (a) with the other identity helpers, when the cache is the default.
        b, s = big.name, small.name
        db_b, db_s = dbs[b], dbs[s]
        out["identity_helpers"] = _identity_default[db_b]
        both_identities = out["identity_helpers"] == "cache"
        if both_identities:
            use_identity(server, db_b, "portable")
            out["same_rows"]["w1_portable"] = same_rows(
                server,
                db_b,
                "w1_rls.sql",
                "w1_filter.sql",
                [(2, 1), (3, 2), (4, 3)],
                w1_vars(big),
                10 if quick else 50,
            )
            use_identity(server, db_b, None)
        log(f"same rows: {out['same_rows']}")

        # Listed so that compared cases run side by side (see interleaved()), and so
        # that the identity helpers switch once per round. w1_rls_bare is the same
        # script with the context keys moved aside: the bare app.user_id counts, as
        # before issue 14 (the token is still read and set, but not verified), so the
        # pair with w1_rls isolates the cost of verifying the token.
        cases = [
            Case(f"w1_libsql@{b}", db_b, "w1_libsql.sql", APP_LOGIN, w1_vars(big)),
            Case(f"w1_rls_bare@{b}", db_b, "w1_rls.sql", APP_LOGIN, w1_vars(big), context="bare"),
            Case(f"w1_rls@{b}", db_b, "w1_rls.sql", APP_LOGIN, w1_vars(big)),
            Case(f"w1_filter@{b}", db_b, "w1_filter.sql", FILTER_LOGIN, w1_vars(big)),
        ]
        if both_identities:
            cases += [
                Case(
                    f"w1_rls_portable@{b}",
                    db_b,
                    "w1_rls.sql",
                    APP_LOGIN,
                    w1_vars(big),
                    identity="portable",
                ),
                Case(
                    f"w1_rls_portable_bare@{b}",
                    db_b,
                    "w1_rls.sql",
                    APP_LOGIN,
                    w1_vars(big),
                    identity="portable",
                    context="bare",
                ),
            ]
        cases += [
            Case(f"w1_filter@{s}", db_s, "w1_filter.sql", FILTER_LOGIN, w1_vars(small)),
            Case(f"w1_rls@{s}", db_s, "w1_rls.sql", APP_LOGIN, w1_vars(small)),
            Case(f"w2_rls@{b}", db_b, "w2_rls.sql", APP_LOGIN, w2_vars(big)),
            Case(f"w2_filter@{b}", db_b, "w2_filter.sql", FILTER_LOGIN, w2_vars(big)),
            Case(f"w2_filter@{s}", db_s, "w2_filter.sql", FILTER_LOGIN, w2_vars(small)),
            Case(f"w2_rls@{s}", db_s, "w2_rls.sql", APP_LOGIN, w2_vars(small)),
        ]
        if mid is not None:  # only for the plot of latency against scale
            m, db_m = mid.name, dbs[mid.name]
            cases += [
                Case(f"w1_rls@{m}", db_m, "w1_rls.sql", APP_LOGIN, w1_vars(mid)),
                Case(f"w1_filter@{m}", db_m, "w1_filter.sql", FILTER_LOGIN, w1_vars(mid)),
                Case(f"w2_rls@{m}", db_m, "w2_rls.sql", APP_LOGIN, w2_vars(mid)),
                Case(f"w2_filter@{m}", db_m, "w2_filter.sql", FILTER_LOGIN, w2_vars(mid)),
            ]
        stats = interleaved(server, cases, rounds, tx)
        lat = {label: st.summary() for label, st in stats.items()}
        out["latency"] = lat

        def ratio(a: str, c: str, k: str) -> float:
            """Median over the rounds of a's figure over c's in the same round."""
            pa = stats[a].p50 if k == "p50_ms" else stats[a].p99
            pc = stats[c].p50 if k == "p50_ms" else stats[c].p99
            return float(statistics.median(x / y for x, y in zip(pa, pc, strict=True)))

        out["ratios_of_medians"] = {
            "rls_vs_filter_p50": lat[f"w1_rls@{b}"]["p50_ms"] / lat[f"w1_filter@{b}"]["p50_ms"],
            "rls_vs_filter_p99": lat[f"w1_rls@{b}"]["p99_ms"] / lat[f"w1_filter@{b}"]["p99_ms"],
            "scale_full_vs_1pct_p50_w1": lat[f"w1_rls@{b}"]["p50_ms"]
            / lat[f"w1_rls@{s}"]["p50_ms"],
            "scale_full_vs_1pct_p50_w2": lat[f"w2_rls@{b}"]["p50_ms"]
            / lat[f"w2_rls@{s}"]["p50_ms"],
        }

        out["rls_vs_filter_p50"] = ratio(f"w1_rls@{b}", f"w1_filter@{b}", "p50_ms")
        out["rls_vs_filter_p99"] = ratio(f"w1_rls@{b}", f"w1_filter@{b}", "p99_ms")
        if both_identities:
            portable = f"w1_rls_portable@{b}"
            out["rls_portable_vs_filter_p50"] = ratio(portable, f"w1_filter@{b}", "p50_ms")
            out["rls_portable_vs_filter_p99"] = ratio(portable, f"w1_filter@{b}", "p99_ms")
            out["rls_portable_bare_vs_filter_p50"] = ratio(
                f"w1_rls_portable_bare@{b}", f"w1_filter@{b}", "p50_ms"
            )
            out["rls_portable_token_vs_bare_p50"] = ratio(
                portable, f"w1_rls_portable_bare@{b}", "p50_ms"
            )
        out["rls_bare_vs_filter_p50"] = ratio(f"w1_rls_bare@{b}", f"w1_filter@{b}", "p50_ms")
        out["rls_bare_vs_filter_p99"] = ratio(f"w1_rls_bare@{b}", f"w1_filter@{b}", "p99_ms")
        out["rls_token_vs_bare_p50"] = ratio(f"w1_rls@{b}", f"w1_rls_bare@{b}", "p50_ms")
        out["library_sql_rls_vs_filter_p50"] = ratio(f"w1_libsql@{b}", f"w1_filter@{b}", "p50_ms")
        out["w2_rls_vs_filter_p50"] = ratio(f"w2_rls@{b}", f"w2_filter@{b}", "p50_ms")
        out["w2_rls_vs_filter_p99"] = ratio(f"w2_rls@{b}", f"w2_filter@{b}", "p99_ms")
        out["scale_full_vs_1pct_p50_w1"] = ratio(f"w1_rls@{b}", f"w1_rls@{s}", "p50_ms")
        out["scale_full_vs_1pct_p50_w2"] = ratio(f"w2_rls@{b}", f"w2_rls@{s}", "p50_ms")
        out["scale_full_vs_1pct_p50"] = max(
            out["scale_full_vs_1pct_p50_w1"], out["scale_full_vs_1pct_p50_w2"]
        )

        # Server CPU per transaction (barely disturbed by other load on the machine).
        # (label, script, login, identity helpers, context)
        cpu_forms: list[tuple[str, str, str, str | None, str | None]] = [
            ("w1_rls", "w1_rls", APP_LOGIN, None, None),
            ("w1_filter", "w1_filter", FILTER_LOGIN, None, None),
            ("w1_libsql", "w1_libsql", APP_LOGIN, None, None),
            ("w1_rls_bare", "w1_rls", APP_LOGIN, None, "bare"),
        ]
        if both_identities:
            cpu_forms.append(("w1_rls_portable", "w1_rls", APP_LOGIN, "portable", None))
            cpu_forms.append(("w1_rls_portable_bare", "w1_rls", APP_LOGIN, "portable", "bare"))
        cpu: dict[str, list[float]] = {label: [] for label, *_ in cpu_forms}
        n_cpu = 40 if quick else 300
        for _ in range(3 if quick else 7):
            for label, form, login, identity, context in cpu_forms:
                use_identity(server, db_b, identity)
                use_context(server, db_b, context)
                value = server_cpu_per_tx(
                    server.url(dbs[b], login),
                    parse_script(SQL_DIR / f"{form}.sql"),
                    w1_vars(big),
                    n_cpu,
                )
                if value is not None:
                    cpu[label].append(value)
        use_identity(server, db_b, None)
        use_context(server, db_b, None)
        if all(cpu.values()):
            out["server_cpu_us_per_tx"] = {k: statistics.median(v) for k, v in cpu.items()}
            out["rls_vs_filter_server_cpu"] = (
                out["server_cpu_us_per_tx"]["w1_rls"] / out["server_cpu_us_per_tx"]["w1_filter"]
            )
            out["rls_bare_vs_filter_server_cpu"] = (
                out["server_cpu_us_per_tx"]["w1_rls_bare"]
                / out["server_cpu_us_per_tx"]["w1_filter"]
            )
            if both_identities:
                out["rls_portable_vs_filter_server_cpu"] = (
                    out["server_cpu_us_per_tx"]["w1_rls_portable"]
                    / out["server_cpu_us_per_tx"]["w1_filter"]
                )
                out["rls_portable_bare_vs_filter_server_cpu"] = (
                    out["server_cpu_us_per_tx"]["w1_rls_portable_bare"]
                    / out["server_cpu_us_per_tx"]["w1_filter"]
                )
        log(f"server CPU per tx: {out.get('server_cpu_us_per_tx')}")

        # Workload 3: refresh claims, 2 concurrent workers.
        reset_claims(server, dbs[b])
        w3 = Case("w3_claim", dbs[b], "w3_claim.sql", FILTER_LOGIN, {})
        claims = pgbench(server, w3, transactions=5 if quick else 40, clients=2)
        reset_claims(server, dbs[b])
        out["w3"] = {
            "p50_ms": percentile(claims, 0.5),
            "p99_ms": percentile(claims, 0.99),
            "transactions": len(claims),
            **claim_check(server, dbs[b], key),
        }
        reset_claims(server, dbs[b])
        log(f"w3: {out['w3']}")

        # Library against raw psycopg.
        out["library"] = library_vs_raw(
            server,
            dbs[b],
            key,
            _context_keys[dbs[b]],
            big.users,
            rounds=3 if quick else 7,
            iterations=30 if quick else 300,
        )
        out["library_vs_raw_p50"] = out["library"]["library_vs_raw_p50"]
        out["library_vs_sql_decrypt_p50"] = out["library"]["library_vs_sql_decrypt_p50"]
        log(f"library: {out['library']}")

        out["decrypt"] = decrypt_throughput(server, dbs[b], key)
        out["decrypt_tokens_per_s"] = out["decrypt"]["tokens_per_s_cpu"]
        out["decrypt_sql"] = decrypt_throughput_sql(server, dbs[b], key)
        out["decrypt_sql_tokens_per_s"] = out["decrypt_sql"]["tokens_per_s_cpu"]
        log(f"decrypt: {out['decrypt']}; in SQL: {out['decrypt_sql']}")

        # Last: it deletes the expired sessions.
        out["cleanup"] = cleanup_under_load(
            server,
            next(c for c in cases if c.label == f"w1_rls@{b}"),
            seconds=4 if quick else 30,
            batch=100 if quick else 5000,
        )
        out["cleanup_p99_ratio"] = out["cleanup"]["cleanup_p99_ratio"]
        out["cleanup_max_lock_wait_s"] = out["cleanup"]["max_lock_wait_s"]
        log(f"cleanup: {out['cleanup']}")
    out["total_seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------- report


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def report_table(res: dict[str, Any]) -> str:
    """The Markdown results section of bench/README.md."""
    lat = res["latency"]
    b, s = res["scales"]["big"], res["scales"]["small"]
    m, rows, cl, w3, lib = res["machine"], res["rows"], res["cleanup"], res["w3"], res["library"]
    cpu = res.get("server_cpu_us_per_tx", {})
    load = res["load_seconds"][b]
    lines = [
        f"Measured {res.get('measured_at', '?')} on: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory']} RAM, {m['os']}, PostgreSQL {m.get('postgresql', '?')}, "
        f"Python {m['python']}; a throwaway cluster with fsync off "
        "(`LocalCluster(fast=True)`). The machine was shared with other work while this ran: "
        "wall-clock figures are noisy, the server-CPU figure much less so.",
        "",
        f"Identity helpers of form (a): **{res.get('identity_helpers', 'portable')}**"
        + (
            " (the extension ext/agentapi_identity); the portable helpers, for servers "
            "without it, were measured in the same run on the same database."
            if res.get("identity_helpers") == "cache"
            else " (the server lacks ext/agentapi_identity)."
        ),
        "",
        f"Data ({b}): {rows['organizations']:,} organizations, {rows['users']:,} users, "
        f"{rows['user_sessions']:,} sessions ({rows['expired_sessions']:,} expired), "
        f"{rows['mcp_configurations']:,} MCP configs "
        f"({rows['encrypted_bearer_tokens']:,} encrypted bearer tokens), "
        f"{rows['mcp_oauth_tokens']:,} OAuth tokens, {rows['system_prompts']:,} prompts, "
        f"{rows['audit_logs']:,} audit events; generated and loaded in {load:.0f} s.",
        "",
        _row("workload", "form", "p50 ms", "p99 ms"),
        _row("---", "---", "---", "---"),
    ]
    for w in ("w1", "w2"):
        for scale in reversed(_scale_names(res)):
            forms = [("rls", "(a) RLS"), ("filter", "(b) filter")]
            if w == "w1" and scale == b:
                forms.append(("libsql", "(a) RLS, the library's statements"))
                if f"w1_rls_portable@{b}" in lat:
                    forms.append(("rls_portable", "(a) RLS, portable identity helpers"))
                if f"w1_rls_bare@{b}" in lat:
                    forms.append(("rls_bare", "(a) RLS, bare app.user_id (no context key)"))
                if f"w1_rls_portable_bare@{b}" in lat:
                    forms.append(
                        ("rls_portable_bare", "(a) RLS, portable helpers, bare app.user_id")
                    )
            for form, name in forms:
                k = lat[f"{w}_{form}@{scale}"]
                lines.append(
                    _row(f"{w} @ {scale}", name, _fmt(k["p50_ms"], 3), _fmt(k["p99_ms"], 3))
                )
    lines += [
        _row("w3 claim 100, 2 workers", "service", _fmt(w3["p50_ms"], 3), _fmt(w3["p99_ms"], 3)),
        _row(
            "w1 via the library",
            "(a) RLS",
            _fmt(lib["library_p50_ms"], 3),
            _fmt(lib["library_p99_ms"], 3),
        ),
        _row(
            "w1 via raw psycopg", "(a) RLS", _fmt(lib["raw_p50_ms"], 3), _fmt(lib["raw_p99_ms"], 3)
        ),
    ]
    if "raw_sql_decrypt_p50_ms" in lib:
        lines.append(
            _row(
                "w1 via raw psycopg, tokens decrypted in SQL (the old path)",
                "(a) RLS",
                _fmt(lib["raw_sql_decrypt_p50_ms"], 3),
                _fmt(lib["raw_sql_decrypt_p99_ms"], 3),
            )
        )

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    rls = res["rls_vs_filter_p50"]
    scale_ratio = res["scale_full_vs_1pct_p50"]
    lines += [
        "",
        _row("target", "measured", "verdict"),
        _row("---", "---", "---"),
        _row(
            "RLS ÷ filter, w1, p50 ≤ 1.10",
            f"{_fmt(rls)} (p99 {_fmt(res['rls_vs_filter_p99'])})",
            verdict(rls <= 1.10),
        ),
    ]
    if cpu:
        lines.append(
            _row(
                "(server CPU per w1 transaction, RLS ÷ filter)",
                f"{_fmt(res['rls_vs_filter_server_cpu'])} "
                f"({cpu['w1_rls']:.0f} µs ÷ {cpu['w1_filter']:.0f} µs)",
                "",
            )
        )
    if "rls_bare_vs_filter_p50" in res:
        bare_cpu = (
            f"; server CPU {_fmt(res['rls_bare_vs_filter_server_cpu'])}"
            if "rls_bare_vs_filter_server_cpu" in res
            else ""
        )
        lines.append(
            _row(
                "(the same with the bare app.user_id, no context key: as before issue 14)",
                f"{_fmt(res['rls_bare_vs_filter_p50'])} "
                f"(p99 {_fmt(res['rls_bare_vs_filter_p99'])}{bare_cpu})",
                "",
            )
        )
    if "rls_portable_vs_filter_p50" in res:
        portable_cpu = (
            f"; server CPU {_fmt(res['rls_portable_vs_filter_server_cpu'])}"
            if "rls_portable_vs_filter_server_cpu" in res
            else ""
        )
        lines.append(
            _row(
                "(the same with the portable identity helpers, no extension)",
                f"{_fmt(res['rls_portable_vs_filter_p50'])} "
                f"(p99 {_fmt(res['rls_portable_vs_filter_p99'])}{portable_cpu})",
                verdict(res["rls_portable_vs_filter_p50"] <= 1.10) + " without the extension",
            )
        )
    if "rls_portable_bare_vs_filter_p50" in res:
        portable_bare_cpu = (
            f"; server CPU {_fmt(res['rls_portable_bare_vs_filter_server_cpu'])}"
            if "rls_portable_bare_vs_filter_server_cpu" in res
            else ""
        )
        lines.append(
            _row(
                "(portable identity helpers, bare app.user_id)",
                f"{_fmt(res['rls_portable_bare_vs_filter_p50'])}{portable_bare_cpu}",
                "",
            )
        )
    lines += [
        _row(
            "(w1 with the library's statements, RLS ÷ filter, p50)",
            _fmt(res["library_sql_rls_vs_filter_p50"]),
            "",
        ),
        _row("(w2 admin pages, RLS ÷ filter, p50)", _fmt(res["w2_rls_vs_filter_p50"]), ""),
        _row(
            "library ÷ raw psycopg, p50 ≤ 1.25",
            _fmt(res["library_vs_raw_p50"]),
            verdict(res["library_vs_raw_p50"] <= 1.25),
        ),
        *(
            [
                _row(
                    "(library, decrypting in-process ÷ raw psycopg decrypting in SQL, p50)",
                    _fmt(res["library_vs_sql_decrypt_p50"]),
                    "",
                )
            ]
            if "library_vs_sql_decrypt_p50" in res
            else []
        ),
        _row(
            "full ÷ 1% scale, p50 of w1 and w2 ≤ 1.3",
            f"w1 {_fmt(res['scale_full_vs_1pct_p50_w1'])}, "
            f"w2 {_fmt(res['scale_full_vs_1pct_p50_w2'])}",
            verdict(scale_ratio <= 1.3),
        ),
        _row(
            "(full ÷ 1% scale of the filter form, w1 and w2, ratio of medians)",
            f"w1 {_fmt(lat[f'w1_filter@{b}']['p50_ms'] / lat[f'w1_filter@{s}']['p50_ms'])}, "
            f"w2 {_fmt(lat[f'w2_filter@{b}']['p50_ms'] / lat[f'w2_filter@{s}']['p50_ms'])}",
            "",
        ),
        _row(
            "cleanup: w1 p99 rises at most 2 times",
            f"{_fmt(res['cleanup_p99_ratio'])} ({cl['deleted']:,} rows deleted in "
            f"{cl['batches']} batches of {cl['batch_size']:,})",
            verdict(res["cleanup_p99_ratio"] <= 2.0),
        ),
        _row(
            "cleanup: no lock wait over 1 s",
            f"longest seen {_fmt(cl['max_lock_wait_s'], 3)} s",
            verdict(cl["max_lock_wait_s"] <= 1.0),
        ),
        *(
            [
                _row(
                    "decryption through the library (in-process) ≥ 100,000 tokens/s on one core",
                    f"{res['decrypt_tokens_per_s']:,.0f}/s of CPU "
                    f"({res['decrypt']['tokens_per_s_wall']:,.0f}/s wall)",
                    verdict(res["decrypt_tokens_per_s"] >= 100_000),
                ),
                _row(
                    "(decryption in SQL, decrypt_token with the master key, one backend)",
                    f"{res['decrypt_sql_tokens_per_s']:,.0f}/s of CPU "
                    f"({res['decrypt_sql']['tokens_per_s_wall']:,.0f}/s wall)",
                    "",
                ),
            ]
            if "decrypt_sql" in res
            else [
                _row(
                    "decryption ≥ 50,000 tokens/s on one core",
                    f"{res['decrypt_tokens_per_s']:,.0f}/s of CPU "
                    f"({res['decrypt']['tokens_per_s_wall']:,.0f}/s wall)",
                    verdict(res["decrypt_tokens_per_s"] >= 50_000),
                )
            ]
        ),
        _row("full scale loads in < 5 min", f"{load:.0f} s", verdict(load < 300)),
        _row(
            "both forms return the same rows",
            f"w1 {res['same_rows']['w1']['statements_compared']}"
            + (
                f" (+{res['same_rows']['w1_portable']['statements_compared']} portable)"
                if "w1_portable" in res["same_rows"]
                else ""
            )
            + f" and w2 {res['same_rows']['w2']['statements_compared']} statement results "
            "compared",
            "met",
        ),
        _row(
            "no token claimed twice",
            f"{w3['claimed']:,} claims, {w3['double_claims']} twice",
            verdict(w3["double_claims"] == 0),
        ),
    ]
    return "\n".join(lines)


def _tenth(big: Scale) -> tuple[int, int, int, int]:
    t = scale_named(str(big.fraction / 10))
    return t.orgs, t.users, t.sessions, t.audit_events


def _scale_names(res: dict[str, Any]) -> list[str]:
    """The measured scales, smallest first."""
    sc = res["scales"]
    return [sc["small"], *([sc["mid"]] if "mid" in sc else []), sc["big"]]


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = res["latency"]
    names = _scale_names(res)
    by_scale = res.get("rows_by_scale") or {
        res["scales"]["small"]: res["rows_small"],
        res["scales"]["big"]: res["rows"],
    }
    xs = [by_scale[n]["user_sessions"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for w, name in (("w1", "w1 session start"), ("w2", "w2 admin pages")):
        for form, style in (("rls", "-o"), ("filter", "--s")):
            ys = [lat[f"{w}_{form}@{n}"]["p50_ms"] for n in names]
            ax.plot(xs, ys, style, label=f"{name}, {'(a) RLS' if form == 'rls' else '(b) filter'}")
    ax.set_xscale("log")
    ax.set_xlabel("sessions in the database (log scale)")
    ax.set_ylabel("p50 latency per transaction (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("agentapi-db: latency against data scale (pgbench, -M prepared)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN_MARK = "<!-- results:begin (written by python bench/run.py --report) -->"
END_MARK = "<!-- results:end -->"


def write_report(res: dict[str, Any]) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else f"{BEGIN_MARK}\n{END_MARK}\n"
    if BEGIN_MARK not in text or END_MARK not in text:
        text += f"\n{BEGIN_MARK}\n{END_MARK}\n"
    head, rest = text.split(BEGIN_MARK, 1)
    _, tail = rest.split(END_MARK, 1)
    body = report_table(res) + f"\n\n![latency against scale]({PLOT.name})\n"
    README.write_text(f"{head}{BEGIN_MARK}\n{body}{END_MARK}{tail}", encoding="utf-8")
    plot(res, PLOT)


JSON_KEYS = (
    "rls_vs_filter_p50",
    "rls_vs_filter_p99",
    "library_vs_raw_p50",
    "scale_full_vs_1pct_p50",
    "cleanup_p99_ratio",
    "decrypt_tokens_per_s",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--report",
        action="store_true",
        help="write bench/results.json, the README table and the plot",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the README table and plot from bench/results.json",
    )
    parser.add_argument("--scale", help="full (default), 10pct, 1pct or a fraction of full")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="a superuser URL of an existing server")
    where.add_argument(
        "--bindir", help="bin directory of the PostgreSQL server to start (e.g. "
        "/opt/agentapi-db/postgresql/18/bin); default: agentapi_db.cluster.find_binaries()"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; quick 2)")
    args = parser.parse_args(argv)
    if args.report_only:
        write_report(json.loads(RESULTS_JSON.read_text(encoding="utf-8")))
        return 0
    res = run(args)
    res["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.report:
        RESULTS_JSON.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        write_report(res)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        for k in JSON_KEYS:
            print(f"{k}: {res[k]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
