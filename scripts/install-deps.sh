#!/usr/bin/env bash
# Install what agentapi-db needs, on Debian/Ubuntu, as root. Idempotent, and quick
# when everything is already there (apt is not touched then). Every step checks the
# FILES that the build and the tests use, never a package name or a neighbouring file:
#
#   * PostgreSQL >= 15 server (initdb, postgres, pg_ctl, psql, pg_config) with contrib
#     (pgcrypto, uuid-ossp: control file and .so)
#   * pgbouncer
#   * pg_cron for the installed server version (pg_cron.so, pg_cron.control)
#   * ext/agentapi_identity, the optional identity cache: gcc, make, the server
#     headers ($(pg_config --includedir-server)/postgres.h, from
#     postgresql-server-dev-<major>), then the extension's .so and control file
#   * this package, editable, with the dev extras (checked by importing its modules)
#
# The identity cache is optional: if it cannot be built, agentapi-db works with the
# portable identity helpers and this script says so in one line. With
# --require-identity-cache (what scripts/test.sh passes) that is an error instead.
#
# Note: on Debian 12, installing postgresql-server-dev-15 also upgrades the server
# package postgresql-15 to the same (newer) point release, e.g. 15.18 -> 15.20.
#
# Debian's packages create and may start a default cluster ("main" on port 5432).
# We leave it alone: agentapi-db and the tests run their own clusters on free ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

require_identity=0
for arg in "$@"; do
  case "$arg" in
    --require-identity-cache) require_identity=1 ;;
    *) printf 'install-deps: unknown argument %s\n' "$arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
log() { printf 'install-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  SUDO_MISSING=1
else
  SUDO_MISSING=0
fi
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif [ "$SUDO_MISSING" -eq 0 ]; then sudo "$@"
  else log "need root to run: $*"; exit 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Highest installed PostgreSQL server major version >= 15, or nothing.
pg_major() {
  local best="" f v
  for f in /usr/lib/postgresql/*/bin/initdb; do
    [ -x "$f" ] || continue
    v=${f#/usr/lib/postgresql/}
    v=${v%%/*}
    [[ "$v" =~ ^[0-9]+$ ]] || continue
    [ "$v" -ge 15 ] || continue
    if [ -z "$best" ] || [ "$v" -gt "$best" ]; then best=$v; fi
  done
  printf '%s' "$best"
}

# --- PostgreSQL server + contrib --------------------------------------------------
server_ok() {
  local bin=/usr/lib/postgresql/$1/bin share=/usr/share/postgresql/$1/extension
  local lib=/usr/lib/postgresql/$1/lib f
  for f in "$bin"/initdb "$bin"/postgres "$bin"/pg_ctl "$bin"/psql "$bin"/pg_config; do
    [ -x "$f" ] || return 1
  done
  for f in "$share"/pgcrypto.control "$share"/uuid-ossp.control "$lib"/pgcrypto.so "$lib"/uuid-ossp.so; do
    [ -f "$f" ] || return 1
  done
}

major=$(pg_major)
if [ -z "$major" ] || ! server_ok "$major"; then
  if [ -z "$major" ]; then
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    if apt-cache show postgresql-15 >/dev/null 2>&1; then
      major=15
    else
      apt_install postgresql postgresql-contrib
      major=$(pg_major)
    fi
  fi
  if [ -n "$major" ]; then
    apt_install "postgresql-$major" "postgresql-client-$major" postgresql-contrib
  fi
  major=$(pg_major)
  if [ -z "$major" ] || ! server_ok "$major"; then
    log "no complete PostgreSQL >= 15 server (with contrib) after installing; this distribution ships an older one"
    exit 1
  fi
fi
pg_config_bin=/usr/lib/postgresql/$major/bin/pg_config

# --- pgbouncer, pg_cron -------------------------------------------------------------
missing=()
if ! command -v pgbouncer >/dev/null 2>&1 && ! [ -x /usr/sbin/pgbouncer ]; then
  missing+=(pgbouncer)
fi
if ! [ -f "$("$pg_config_bin" --pkglibdir)/pg_cron.so" ] \
   || ! [ -f "$("$pg_config_bin" --sharedir)/extension/pg_cron.control" ]; then
  missing+=("postgresql-$major-cron")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# --- agentapi_identity (ext/): the optional identity-cache extension ------------------
# Built against the server found above and installed into its directories, so the
# clusters that the tests, the demo and the benchmark start have it. The schema works
# without it (portable helpers); with it, the RLS helpers look the acting user up once
# per transaction. scripts/build-identity.sh rebuilds only when its sources change.
identity_needs=()
command -v gcc >/dev/null 2>&1 || identity_needs+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || identity_needs+=(make)
[ -f "$("$pg_config_bin" --includedir-server)/postgres.h" ] || identity_needs+=("postgresql-server-dev-$major")
identity_why=""
if [ "${#identity_needs[@]}" -gt 0 ] && ! apt_install "${identity_needs[@]}"; then
  identity_why="could not install ${identity_needs[*]}"
elif ! bash scripts/build-identity.sh "$pg_config_bin"; then
  identity_why="building ext/agentapi_identity for PostgreSQL $major failed"
fi
if [ -n "$identity_why" ]; then
  if [ "$require_identity" -eq 1 ]; then
    log "error: $identity_why, and --require-identity-cache was given"
    exit 1
  fi
  log "identity cache not available ($identity_why): agentapi-db uses the portable identity helpers"
fi

# --- the Python package -------------------------------------------------------------
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  log "$PY is $("$PY" --version 2>&1); agentapi-db needs Python 3.11 or newer"
  exit 1
fi

stamp=.install-deps.stamp
want="$(cat pyproject.toml hatch_build.py | sha256sum | cut -d' ' -f1) $(command -v "$PY") $(pwd)"
have_pkg() {
  "$PY" - <<'PYEOF'
import importlib.util, pathlib, sys
for mod in ("pytest", "pytest_timeout", "hypothesis", "mypy", "ruff", "matplotlib", "psycopg",
            "psycopg_pool", "pydantic", "typer", "rich"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(1)
spec = importlib.util.find_spec("agentapi_db")
if spec is None or spec.origin is None:
    sys.exit(1)
src = (pathlib.Path.cwd() / "src").resolve()
sys.exit(0 if pathlib.Path(spec.origin).resolve().is_relative_to(src) else 1)
PYEOF
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && have_pkg; then
  :
else
  log "pip install -e .[dev]"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
  printf '%s\n' "$want" >"$stamp"
fi
# pyenv only puts new console scripts (agentapi-db) on PATH after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
log "ok (PostgreSQL $major)"
