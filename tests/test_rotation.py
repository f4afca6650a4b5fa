"""Encryption key rotation: library level, CLI, and SIGKILL at random points."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from agentapi_db import Database, opsdb
from agentapi_db.errors import ConfigurationError
from agentapi_db.keys import EncryptionKey
from agentapi_db.rotation import RotationError, rotate_keys, verify_rotation
from tests.cli_fixtures import run_cli
from tests.ops_fixtures import (
    key_states,
    plaintext_mismatches,
    seed_encrypted,
    seed_tenant,
)
from tests.pg import APP_LOGIN, SERVICE_LOGIN, SUPERUSER, TestDatabase

_CORRUPT = "UPDATE mcp_configurations SET bearer_token = encrypt_token('x', %s) WHERE id = %s"
_FIRST_CONFIG = "SELECT id FROM mcp_configurations WHERE bearer_token IS NOT NULL ORDER BY id"
_CONFIG_NAMES = "SELECT id, name FROM mcp_configurations WHERE bearer_token IS NOT NULL"
_DECRYPT_CONFIGS = (
    "SELECT id, decrypt_token(bearer_token, %s) FROM mcp_configurations"
    " WHERE bearer_token IS NOT NULL"
)
_NOW = "SELECT now()"
_ROTATED_ROWS = (
    "SELECT (SELECT count(*) FROM mcp_configurations WHERE updated_at >= %s)"
    " + (SELECT count(*) FROM mcp_oauth_tokens WHERE updated_at >= %s)"
)
_CIPHERTEXTS = (
    "SELECT id::text || coalesce(bearer_token, '') FROM mcp_configurations "
    "UNION ALL SELECT id::text || access_token || coalesce(refresh_token, '') "
    "FROM mcp_oauth_tokens ORDER BY 1"
)


def _ciphertexts(db: TestDatabase) -> list[str]:
    with db.connect(SUPERUSER) as conn:
        return [str(r[0]) for r in conn.execute(_CIPHERTEXTS)]


def test_rotate_then_verify(db: TestDatabase) -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    tenant = seed_tenant(db, "rot")
    n = seed_encrypted(db, tenant, old, bearer=40, oauth=30)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        before = verify_rotation(conn, new, old)
        assert not before.ok and before.total == n
        assert sum(c.old_key for c in before.columns) == n

        seen: list[int] = []
        result = rotate_keys(conn, new, old, batch_size=7, on_batch=seen.append)
        assert result.values_seen == n == sum(seen)
        assert result.values_reencrypted == n
        assert result.batches == (40 + 6) // 7 + (30 + 6) // 7

        after = verify_rotation(conn, new, old)
        assert after.ok, after
        assert after.total == n
        # A rerun finds nothing left to do.
        again = rotate_keys(conn, new, old, batch_size=1000)
        assert (again.values_seen, again.values_reencrypted) == (n, 0)
    assert key_states(db, new, old) == (n, 0, 0, 0)
    count, bad = plaintext_mismatches(db, new)
    assert (count, bad) == (n, [])


def test_verify_changes_nothing_and_reports_old_values(db: TestDatabase) -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    seed_encrypted(db, seed_tenant(db, "ver"), old, bearer=5, oauth=10)
    before = _ciphertexts(db)
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        report = verify_rotation(conn, new, old)
        without_old = verify_rotation(conn, new, None)
    assert _ciphertexts(db) == before
    assert not report.ok and not without_old.ok
    by_column = {c.column: c for c in report.columns}
    assert by_column["mcp_configurations.bearer_token"].old_key == 5
    assert by_column["mcp_oauth_tokens.refresh_token"].old_key == 9
    assert len(by_column["mcp_oauth_tokens.access_token"].sample) == 5


def test_unreadable_value_stops_rotation_and_is_kept(db: TestDatabase) -> None:
    old, new, stray = (EncryptionKey.generate() for _ in range(3))
    seed_encrypted(db, seed_tenant(db, "bad"), old, bearer=20, oauth=0)
    with db.connect(SUPERUSER) as conn:
        ids = [r[0] for r in conn.execute(_FIRST_CONFIG)]
        conn.execute(_CORRUPT, (stray.sql_value, ids[10]))
        conn.commit()
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn:
        with pytest.raises(RotationError) as info:
            rotate_keys(conn, new, old, batch_size=3)
        assert info.value.row_id == ids[10]
        assert new.sql_value not in str(info.value) and old.sql_value not in str(info.value)
        report = verify_rotation(conn, new, old)
    col = report.columns[0]
    # Batches before the bad row committed; the bad row and later ones are untouched.
    assert (col.ok, col.unreadable, col.old_key) == (9, 1, 10)


def test_same_key_is_refused(db: TestDatabase) -> None:
    key = EncryptionKey.generate()
    with opsdb.connect(db.url(SERVICE_LOGIN)) as conn, pytest.raises(ConfigurationError):
        rotate_keys(conn, key, EncryptionKey.parse(key.reveal()))


def _env(db: TestDatabase, new: EncryptionKey, old: EncryptionKey) -> dict[str, str]:
    return {
        "AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN),
        "AGENTAPI_ENCRYPTION_KEY": new.reveal(),
        "AGENTAPI_OLD_ENCRYPTION_KEY": old.reveal(),
    }


def test_cli_rotate_and_verify(db: TestDatabase) -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    n = seed_encrypted(db, seed_tenant(db, "cli"), old, bearer=10, oauth=10)
    env = _env(db, new, old)
    check = run_cli("rotate-key", "--verify", env=env)
    assert check.code == 1, check.stdout + check.stderr
    done = run_cli("rotate-key", "--batch-size", "4", env=env)
    assert done.code == 0, done.stdout + done.stderr
    assert f"{n}" in done.stdout
    check = run_cli("rotate-key", "--verify", env=env)
    assert check.code == 0, check.stdout + check.stderr
    for out in (done, check):
        for secret in (new.reveal(), old.reveal()):
            assert secret not in out.stdout + out.stderr


_TO_LEGACY = (
    "UPDATE mcp_configurations SET bearer_token = encode(extensions.pgp_sym_encrypt("
    "decrypt_token(bearer_token, %(key)s), %(key)s,"
    " 'cipher-algo=aes256, s2k-mode=1, s2k-digest-algo=sha256'), 'base64')"
    " WHERE bearer_token IS NOT NULL"
)


def test_cli_without_old_key_moves_legacy_values_to_ag1(db: TestDatabase) -> None:
    key = EncryptionKey.generate()
    n = seed_encrypted(db, seed_tenant(db, "legacy"), key, bearer=12, oauth=5)
    with db.connect(SUPERUSER) as conn:  # what a database of the previous release holds
        conn.execute(_TO_LEGACY, {"key": key.sql_value})
        conn.commit()
    env = {"AGENTAPI_DATABASE_URL": db.url(SERVICE_LOGIN), "AGENTAPI_ENCRYPTION_KEY": key.reveal()}
    check = run_cli("rotate-key", "--verify", "--json", env=env)
    assert check.code == 1, check.stdout + check.stderr
    assert '"legacy_format": 12' in check.stdout
    done = run_cli("rotate-key", "--batch-size", "5", env=env)
    assert done.code == 0, done.stdout + done.stderr
    # 12 legacy values, and 10 written directly under the master key by encrypt_token
    assert f"{n} re-encrypted from the previous format" in done.stdout
    check = run_cli("rotate-key", "--verify", env=env)
    assert check.code == 0, check.stdout + check.stderr
    assert key_states(db, key, EncryptionKey.generate())[0] == n
    assert plaintext_mismatches(db, key) == (n, [])
    for out in (done, check):
        assert key.reveal() not in out.stdout + out.stderr


def test_sigkill_at_random_points_then_rerun_finishes(db: TestDatabase) -> None:
    """Kill the real CLI with SIGKILL several times mid-rotation; a rerun finishes the job.

    Kill points are random amounts of progress (rows rotated so far, seen through
    ``updated_at``), so they land inside the work however fast the machine is.
    """
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    n = seed_encrypted(db, seed_tenant(db, "kill"), old, bearer=1500, oauth=800)
    assert n == 1500 + 800 + 720
    rows = 1500 + 800
    env = {**os.environ, **_env(db, new, old), "NO_COLOR": "1"}
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    targets = sorted(rng.sample(range(rows // 20, rows - rows // 4), 4))
    watcher = db.connect(SUPERUSER)
    watcher.autocommit = True
    t0 = watcher.execute(_NOW).fetchone()
    assert t0 is not None
    progress: list[tuple[int, ...]] = []
    for target in targets:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentapi_db.cli", "rotate-key", "--batch-size", "10"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            done = watcher.execute(_ROTATED_ROWS, (t0[0], t0[0])).fetchone()
            if done is not None and done[0] >= target:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the rotation finished before its kill point"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        states = key_states(db, new, old)
        # Every value opens with exactly one of the two keys at every kill point.
        assert states[2] == 0 and states[3] == 0, states
        assert states[0] + states[1] == n
        progress.append(states)
    assert all(0 < s[0] < n for s in progress), progress
    assert [s[0] for s in progress] == sorted(s[0] for s in progress)
    final = run_cli("rotate-key", "--batch-size", "200", env=_env(db, new, old))
    assert final.code == 0, final.stdout + final.stderr
    assert key_states(db, new, old) == (n, 0, 0, 0)
    count, bad = plaintext_mismatches(db, new)
    assert (count, bad) == (n, [])
    verify = run_cli("rotate-key", "--verify", env=_env(db, new, old))
    assert verify.code == 0, verify.stdout + verify.stderr


def test_application_keeps_working_during_rotation(db: TestDatabase) -> None:
    """The application (both keys configured) reads and rewrites tokens while rotate-key runs."""
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    tenant = seed_tenant(db, "live")
    seed_encrypted(db, tenant, old, bearer=2000, oauth=0)
    with db.connect(SUPERUSER) as conn:
        expected = {r[0]: f"bearer-secret-{str(r[1])[7:]}" for r in conn.execute(_CONFIG_NAMES)}
    ids = list(expected)
    rng = random.Random(7)
    reads = writes = during = 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentapi_db.cli", "rotate-key", "--batch-size", "10"],
        env={**os.environ, **_env(db, new, old)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with Database(db.url(APP_LOGIN), key=new, old_key=old) as app:
        while proc.poll() is None or reads < 50:
            target = rng.choice(ids)
            with app.as_user(tenant.admin_id) as tx:
                secret = tx.mcp.get_secret(target)
                assert secret is not None and secret.get_secret_value() == expected[target]
                reads += 1
                during += proc.poll() is None
                if rng.random() < 0.3:
                    expected[target] = f"rewritten-{writes}"
                    tx.mcp.update(target, bearer_token=expected[target])
                    writes += 1
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert during > 20 and writes > 10  # the application worked while the rotation ran
    assert key_states(db, new, old) == (2000, 0, 0, 0)
    with db.connect(SUPERUSER) as conn:
        final = {r[0]: r[1] for r in conn.execute(_DECRYPT_CONFIGS, (new.sql_value,))}
    assert final == expected
