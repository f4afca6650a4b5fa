#!/usr/bin/env bash
# Install what agentapi-db needs, on Debian/Ubuntu, as root. Idempotent, and quick
# when everything is already there (apt is not touched then).
#
#   * PostgreSQL >= 15 server with contrib (pgcrypto, uuid-ossp) and psql
#   * pgbouncer
#   * pg_cron for the installed server version
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
