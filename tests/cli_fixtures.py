"""Run the installed ``agentapi-db`` console script as a subprocess (CLI tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.pg import PgServer, create_database, drop_database, unique_name

ENTRY_POINT = "agentapi-db"

# Variables that would point a command at some other database or data dir.
_SCRUBBED = (
    "AGENTAPI_DATABASE_URL",
    "DATABASE_URL",
    "AGENTAPI_DATA_DIR",
    "AGENTAPI_ENCRYPTION_KEY",
    "AGENTAPI_ENCRYPTION_KEY_FILE",
    "AGENTAPI_OLD_ENCRYPTION_KEY",
    "AGENTAPI_OLD_ENCRYPTION_KEY_FILE",
    "AGENTAPI_ENCRYPTION_KEYS",
    "AGENTAPI_ENCRYPTION_KEYS_FILE",
    "AGENTAPI_SQL_DIR",
    "AGENTAPI_DEBUG",
)


@dataclass(frozen=True)
class CliResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.code}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def entry_point() -> str:
    """Absolute path of the installed console script; fails loudly when it is missing."""
    found = shutil.which(ENTRY_POINT)
    if found is None:
        raise AssertionError(
            f"{ENTRY_POINT} is not on PATH: install the package (bash scripts/install-deps.sh)"
        )
    return found


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no database/key/data-dir variables of ours."""
    base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and not k.startswith("PG")}
    base["COLUMNS"] = "200"  # Rich: no wrapping of long lines in assertions
    base.update(extra or {})
    return base


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
    input_text: str | None = None,
) -> CliResult:
    """``agentapi-db *args`` with a clean environment (plus ``env``); never raises on exit."""
    base = cli_env(env)
    argv = [entry_point(), *args]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=base,
        timeout=timeout,
        check=False,
        input=input_text,
    )
    return CliResult(argv=argv, code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


def assert_clean_error(result: CliResult, code: int, *needles: str) -> None:
    """Exit ``code``, one error line (the last on stderr) naming every needle, no traceback.

    Progress messages may precede the error line on stderr.
    """
    assert result.code == code, str(result)
    assert "Traceback" not in result.stderr + result.stdout, str(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and lines[-1] == error_lines[0], str(result)
    for needle in needles:
        assert needle in error_lines[0], f"{needle!r} not in the error line\n{result}"


@contextmanager
def traversable_tmp_dir(prefix: str) -> Iterator[Path]:
    """A temp dir the ``postgres`` OS user can traverse (for a LocalCluster under root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def empty_database(server: PgServer, prefix: str = "agentapi_empty") -> Iterator[str]:
    """Name of a new, empty database (no schema: not cloned from the template)."""
    name = unique_name(prefix)
    create_database(server, name)
    try:
        yield name
    finally:
        drop_database(server, name)
