#!/usr/bin/env bash
# Install what agentapi-db needs, on Debian/Ubuntu, as root. Idempotent, and quick
# when everything is already there (apt is not touched then).
#
#   * PostgreSQL >= 15 server with contrib (pgcrypto, uuid-ossp) and psql
#   * pgbouncer
#   * pg_cron for the installed server version
#   * ext/agentapi_identity, built with PGXS (postgresql-server-dev) and installed
#   * this package, editable, with the dev extras
#
# Debian's packages create and may start a default cluster ("main" on port 5432).
# We leave it alone: agentapi-db and the tests run their own clusters on free ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

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

has_contrib() {
  local ext=/usr/share/postgresql/$1/extension
  [ -f "$ext/pgcrypto.control" ] && [ -f "$ext/uuid-ossp.control" ]
}

# --- PostgreSQL server + contrib --------------------------------------------------
major=$(pg_major)
if [ -z "$major" ] || ! has_contrib "$major" || ! [ -x "/usr/lib/postgresql/$major/bin/psql" ]; then
  if [ -z "$major" ]; then
    if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
    if apt-cache show postgresql-15 >/dev/null 2>&1; then
      apt_install postgresql-15 postgresql-client-15 postgresql-contrib
    else
      apt_install postgresql postgresql-contrib
    fi
  else
    apt_install "postgresql-$major" "postgresql-client-$major" postgresql-contrib
  fi
  major=$(pg_major)
  if [ -z "$major" ]; then
    log "no PostgreSQL >= 15 server after installing; this distribution ships an older one"
    exit 1
  fi
fi

# --- pgbouncer, pg_cron -------------------------------------------------------------
missing=()
if ! command -v pgbouncer >/dev/null 2>&1 && ! [ -x /usr/sbin/pgbouncer ]; then
  missing+=(pgbouncer)
fi
if ! [ -f "/usr/lib/postgresql/$major/lib/pg_cron.so" ]; then
  missing+=("postgresql-$major-cron")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# --- agentapi_identity (ext/): the identity-cache extension ---------------------------
# Built against the server found above and installed into its directories, so the
# clusters that the tests, the demo and the benchmark start have it. The schema works
# without it (portable helpers); with it, the RLS helpers look the acting user up once
# per transaction. Rebuilt only when its sources change.
ext_dir=ext/agentapi_identity
pg_config_bin=/usr/lib/postgresql/$major/bin/pg_config
pgxs_ok() { [ -x "$pg_config_bin" ] && [ -f "$("$pg_config_bin" --pgxs 2>/dev/null)" ]; }
if ! pgxs_ok || ! command -v make >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
  apt_install "postgresql-server-dev-$major" make gcc libc6-dev
fi
ext_want=$(cat "$ext_dir"/Makefile "$ext_dir"/*.control "$ext_dir"/*.sql "$ext_dir"/*.c | sha256sum | cut -d' ' -f1)
ext_stamp="$("$pg_config_bin" --sharedir)/extension/agentapi_identity.sources-sha256"
if ! [ -f "$ext_stamp" ] || [ "$(cat "$ext_stamp")" != "$ext_want" ] \
   || ! [ -f "$("$pg_config_bin" --pkglibdir)/agentapi_identity.so" ]; then
  log "build and install ext/agentapi_identity for PostgreSQL $major"
  ext_build=$(mktemp -d)
  cp "$ext_dir"/Makefile "$ext_dir"/*.control "$ext_dir"/*.sql "$ext_dir"/*.c "$ext_build"/
  make -s -C "$ext_build" PG_CONFIG="$pg_config_bin" with_llvm=no
  as_root make -s -C "$ext_build" PG_CONFIG="$pg_config_bin" with_llvm=no install
  printf '%s\n' "$ext_want" | as_root tee "$ext_stamp" >/dev/null
  rm -rf "$ext_build"
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
for mod in ("pytest", "pytest_timeout", "hypothesis", "mypy", "ruff", "psycopg", "psycopg_pool",
            "pydantic", "typer", "rich"):
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
