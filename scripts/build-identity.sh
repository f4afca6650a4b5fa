#!/usr/bin/env bash
# Build ext/agentapi_identity (the identity-cache extension) with PGXS against one
# PostgreSQL installation and install it there:
#
#   bash scripts/build-identity.sh /path/to/bin/pg_config
#
# Checks the files the build needs (gcc, make, the server headers' postgres.h, pgxs.mk)
# and says which one is missing (exit 3) instead of letting the compiler fail. Rebuilds
# only when the sources changed since the last install into that installation (a
# sha256 stamp next to the control file) or the installed .so / control file is gone.
# Exit 0: installed and current. Installing what is missing is install-deps.sh's job.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pg_config=${1:?usage: build-identity.sh PG_CONFIG}
log() { printf 'build-identity: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

[ -x "$pg_config" ] || { log "no pg_config at $pg_config"; exit 3; }
version=$("$pg_config" --version)
for tool in gcc make; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is missing (needed to build for $version)"; exit 3; }
done
headers="$("$pg_config" --includedir-server)/postgres.h"
[ -f "$headers" ] || { log "server headers missing for $version: no $headers"; exit 3; }
pgxs=$("$pg_config" --pgxs)
[ -f "$pgxs" ] || { log "PGXS missing for $version: no $pgxs"; exit 3; }

ext_dir=ext/agentapi_identity
sources=("$ext_dir"/Makefile "$ext_dir"/*.control "$ext_dir"/*.sql "$ext_dir"/*.c)
want=$(cat "${sources[@]}" | sha256sum | cut -d' ' -f1)
extdir="$("$pg_config" --sharedir)/extension"
stamp="$extdir/agentapi_identity.sources-sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -f "$("$pg_config" --pkglibdir)/agentapi_identity.so" ] \
   && [ -f "$extdir/agentapi_identity.control" ]; then
  exit 0
fi

log "build and install ext/agentapi_identity for $version"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp "${sources[@]}" "$build"/
make -s -C "$build" PG_CONFIG="$pg_config" with_llvm=no
as_root make -s -C "$build" PG_CONFIG="$pg_config" with_llvm=no install
printf '%s\n' "$want" | as_root tee "$stamp" >/dev/null
