"""Fill a database with benchmark data at a chosen scale (set-based SQL in generate.sql).

Usage: python bench/generate.py --database-url URL [--scale full|1pct|quick|0.05]

The database must already hold database/schema.sql. Runs as a superuser.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
GENERATE_SQL = HERE / "generate.sql"
sys.path.insert(0, str(HERE.parent / "src"))

from agentapi_db.crypto import KeyRing, seal  # noqa: E402
from agentapi_db.keys import EncryptionKey  # noqa: E402

TOKENS_PER_ORG = 8
"""Distinct real ciphertexts per organization (under its data key), shared by its rows."""

# The one place where this module's SQL lives.
_SQL_SET_PARAM = "SELECT set_config(%s, %s, false)"
# Filled here with what the application process sealed (generate.sql reads them).
_SQL_GEN_TABLES = (
    "CREATE TEMP TABLE gen_org_keys (o bigint PRIMARY KEY, key_id text NOT NULL,"
    " wrapped_key text NOT NULL);"
    "CREATE TEMP TABLE gen_tokens (o bigint NOT NULL, i int NOT NULL, ct text NOT NULL)"
)
_SQL_COPY_ORG_KEYS = "COPY gen_org_keys (o, key_id, wrapped_key) FROM STDIN"
_SQL_COPY_TOKENS = "COPY gen_tokens (o, i, ct) FROM STDIN"
_SQL_ANALYZE = "VACUUM (ANALYZE)"
_SQL_COUNTS = """
SELECT (SELECT count(*) FROM public.organizations),
       (SELECT count(*) FROM public.users),
       (SELECT count(*) FROM public.user_sessions),
       (SELECT count(*) FROM public.user_sessions WHERE expires_at <= now()),
       (SELECT count(*) FROM public.mcp_configurations),
       (SELECT count(*) FROM public.mcp_configurations WHERE bearer_token IS NOT NULL),
       (SELECT count(*) FROM public.mcp_oauth_tokens),
       (SELECT count(*) FROM public.system_prompts),
       (SELECT count(*) FROM public.audit_logs)
"""


@dataclass(frozen=True)
class Scale:
    """Row counts of the generated data set."""

    name: str
    orgs: int
    users: int
    sessions: int
    audit_events: int

    @property
    def fraction(self) -> float:
        return self.users / FULL.users


FULL = Scale("full", orgs=1000, users=100_000, sessions=1_000_000, audit_events=2_000_000)


def scale_named(name: str) -> Scale:
    """``full``, ``1pct``, ``10pct``, ``quick`` or a fraction of the full scale such as ``0.05``."""
    named = {"full": 1.0, "10pct": 0.1, "1pct": 0.01, "quick": 0.005}
    if name in named:
        fraction = named[name]
    else:
        try:
            fraction = float(name)
        except ValueError:
            raise ValueError(
                f"unknown scale {name!r}: use full, 10pct, 1pct, quick or a fraction"
            ) from None
        if not 0 < fraction <= 1:
            raise ValueError(f"scale fraction must be in (0, 1], got {fraction}")
    return Scale(
        name,
        orgs=max(5, round(FULL.orgs * fraction)),
        users=max(100, round(FULL.users * fraction)),
        sessions=max(1000, round(FULL.sessions * fraction)),
        audit_events=max(2000, round(FULL.audit_events * fraction)),
    )


@dataclass(frozen=True)
class RowCounts:
    organizations: int
    users: int
    user_sessions: int
    expired_sessions: int
    mcp_configurations: int
    encrypted_bearer_tokens: int
    mcp_oauth_tokens: int
    system_prompts: int
    audit_logs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def token_plaintext(o: int, i: int) -> str:
    """The ``i``-th distinct token of organization ``o`` (70 characters, like a real one)."""
    seed = f"{o}.{i}".encode()
    return "tok_" + hashlib.md5(b"t" + seed).hexdigest() + hashlib.md5(b"x" + seed).hexdigest()  # noqa: S324 - test data


def sealed_material(
    orgs: int, key: str
) -> tuple[list[tuple[int, str, str]], list[tuple[int, int, str]]]:
    """Per organization a data key wrapped by the master ``key`` and its token pool.

    Made in this process with the library's own code (agentapi_db.crypto, as
    ``org_sealer`` does on a first secret write), so the values are what the
    library writes and opens: ``ag1`` under each organization's data key.
    """
    ring = KeyRing(EncryptionKey.parse(key))
    org_keys: list[tuple[int, str, str]] = []
    tokens: list[tuple[int, int, str]] = []
    for o in range(1, orgs + 1):
        data_key, wrapped = ring.new_data_key()
        org_keys.append((o, data_key.kid, wrapped))
        tokens += [(o, i, seal(data_key, token_plaintext(o, i))) for i in range(TOKENS_PER_ORG)]
    return org_keys, tokens


def generate(url: str, scale: Scale, key: str) -> tuple[RowCounts, float]:
    """Load ``scale`` into the database at ``url``; returns the row counts and seconds taken.

    ``key`` is the run's master key (64 hex digits): it wraps the organizations' data
    keys here, in this process, and is never sent to the server.
    """
    started = time.perf_counter()
    org_keys, tokens = sealed_material(scale.orgs, key)
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in (
            ("bench.orgs", scale.orgs),
            ("bench.users", scale.users),
            ("bench.sessions", scale.sessions),
            ("bench.audit_events", scale.audit_events),
            ("bench.tokens_per_org", TOKENS_PER_ORG),
        ):
            conn.execute(_SQL_SET_PARAM, (name, str(value)))
        script = GENERATE_SQL.read_text(encoding="utf-8")
        # psql meta-commands are not SQL; the script runs as one simple-protocol batch.
        body = "\n".join(line for line in script.splitlines() if not line.startswith("\\"))
        with conn.transaction():
            conn.execute(_SQL_GEN_TABLES)
            with conn.cursor().copy(_SQL_COPY_ORG_KEYS) as copy:
                for org_key in org_keys:
                    copy.write_row(org_key)
            with conn.cursor().copy(_SQL_COPY_TOKENS) as copy:
                for token in tokens:
                    copy.write_row(token)
            conn.execute(body.encode())
        conn.execute(_SQL_ANALYZE)
        row = conn.execute(_SQL_COUNTS).fetchone()
    if row is None:
        raise RuntimeError("row counts query returned nothing")
    counts = RowCounts(*(int(v) for v in row))
    return counts, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--scale", default="1pct")
    args = parser.parse_args()
    import secrets

    counts, seconds = generate(args.database_url, scale_named(args.scale), secrets.token_hex(32))
    print(counts.as_dict(), f"{seconds:.1f}s")


if __name__ == "__main__":
    main()
