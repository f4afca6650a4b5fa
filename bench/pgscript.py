"""Run pgbench custom scripts from Python, statement by statement.

A tiny interpreter for the subset of pgbench's script language the benchmark
uses (``\\set name random(a, b)`` with integer arithmetic, SQL statements ending
in ``;``, ``\\gset prefix``, ``\\startpipeline``/``\\endpipeline``, which only
change how pgbench batches round trips), so that the *same* script files serve three uses:

* pgbench runs them for the latency figures;
* :func:`run_script` runs them through psycopg to check that both forms return
  the same rows;
* :func:`server_cpu_per_tx` measures the server backend's CPU time per
  transaction (``/proc/<pid>/schedstat``), which other load on the machine
  barely disturbs.

Variables become bind parameters (``:name`` -> ``%(name)s``), as under
``pgbench -M prepared``; nothing is pasted into SQL text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

_SET_RE = re.compile(r"^\\set\s+(\w+)\s+(.+?)\s*$")
_VAR_RE = re.compile(r"(?<![:\w]):(\w+)")
_GSET_RE = re.compile(r"\\gset(?:\s+(\w+))?\s*$")
_PIPELINE_COMMANDS = frozenset({"\\startpipeline", "\\endpipeline"})


@dataclass
class Statement:
    sql: str
    names: list[str]
    gset: str | None = None


@dataclass
class Script:
    path: Path
    sets: list[tuple[str, str]] = field(default_factory=list)
    statements: list[Statement] = field(default_factory=list)


def _to_psycopg(sql: str) -> tuple[str, list[str]]:
    names: list[str] = []

    def repl(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"%({match.group(1)})s"

    return _VAR_RE.sub(repl, sql.replace("%", "%%")), names


def parse_script(path: Path) -> Script:
    """Parse a pgbench script of the supported subset."""
    script = Script(path)
    buf: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        if line.strip() in _PIPELINE_COMMANDS:  # a latency matter: run statement by statement
            continue
        match = _SET_RE.match(line)
        if match:
            script.sets.append((match.group(1), match.group(2)))
            continue
        gset = _GSET_RE.search(line)
        if gset:
            buf.append(line[: gset.start()])
            sql, names = _to_psycopg("\n".join(buf))
            script.statements.append(Statement(sql, names, gset.group(1) or ""))
            buf = []
            continue
        buf.append(line)
        if line.endswith(";"):
            sql, names = _to_psycopg("\n".join(buf).rstrip(";"))
            script.statements.append(Statement(sql, names))
            buf = []
    if buf:
        raise ValueError(f"{path}: statement without a terminating ';'")
    return script


_EXPR_RE = re.compile(r"(?:[\d\s+\-*/().,]|\brandom\b|\bpow\b|\bint\b)*")


def _eval(expr: str, variables: Mapping[str, Any], rng: random.Random) -> int | float:
    """Evaluate a pgbench ``\\set`` expression: numbers, + - * /, random(), pow(), int().

    Integer division is not supported (pgbench truncates, Python would not): the
    scripts pass precomputed variables instead.
    """

    def number(name: str) -> str:
        value = variables[name]
        return repr(float(value) if "." in str(value) else int(value))

    expr = _VAR_RE.sub(lambda m: number(m.group(1)), expr)
    if not _EXPR_RE.fullmatch(expr) or "//" in expr:
        raise ValueError(f"unsupported pgbench expression {expr!r}")
    names = {"random": rng.randint, "pow": pow, "int": int, "__builtins__": {}}
    value = eval(expr, names, {})  # noqa: S307 - checked above: numbers and 3 functions
    if not isinstance(value, int | float):
        raise ValueError(f"pgbench expression {expr!r} is not a number")
    return value


def draw(script: Script, variables: dict[str, Any], rng: random.Random) -> None:
    """Evaluate the script's ``\\set`` lines into ``variables``, in order."""
    for name, expr in script.sets:
        variables[name] = _eval(expr, variables, rng)


def run_script(
    conn: psycopg.Connection[Any], script: Script, variables: dict[str, Any]
) -> list[list[tuple[Any, ...]]]:
    """Run every statement once with ``variables`` (already drawn); the rows of each."""
    results: list[list[tuple[Any, ...]]] = []
    for stmt in script.statements:
        params = {n: None if variables[n] is None else str(variables[n]) for n in stmt.names}
        with conn.cursor() as cur:
            cur.execute(stmt.sql.encode(), params, prepare=True)
            rows = cur.fetchall() if cur.description is not None else []
            if stmt.gset is not None:
                if len(rows) != 1 or cur.description is None:
                    raise RuntimeError(f"{script.path.name}: \\gset needs exactly one row")
                for col, value in zip(cur.description, rows[0], strict=True):
                    variables[stmt.gset + col.name] = value
        results.append(rows)
    return results


def backend_cpu_ns(pid: int) -> int:
    """CPU time a local backend has used so far, in nanoseconds (Linux schedstat)."""
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
        return int(fh.read().split()[0])


def server_cpu_per_tx(
    url: str, script: Script, base_vars: Mapping[str, Any], transactions: int, seed: int = 1
) -> float | None:
    """Mean server CPU microseconds per transaction of ``script`` (None if not measurable)."""
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        pid = conn.info.backend_pid
        if not Path(f"/proc/{pid}/schedstat").exists():
            return None
        variables = dict(base_vars)
        for _ in range(min(20, transactions)):  # warm caches and prepared plans
            draw(script, variables, rng)
            run_script(conn, script, variables)
        start = backend_cpu_ns(pid)
        for _ in range(transactions):
            draw(script, variables, rng)
            run_script(conn, script, variables)
        return (backend_cpu_ns(pid) - start) / transactions / 1000.0
