#!/usr/bin/env bash
# Install the HA and PITR engines agentapi-db drives, on Debian/Ubuntu, as root.
# Idempotent: checks the files first and touches apt only when something is missing
# (one `apt-get update` at most).
#
#   * pg_auto_failover 2.0 for PostgreSQL 15 (pg_autoctl, the pgautofailover extension)
#   * pgBackRest (WAL archiving, full/differential backups, point-in-time restore)
#
# pg_auto_failover is packaged for Debian's PostgreSQL 15 only on bookworm; see
# docs/ha.md for PostgreSQL 16-18.
set -euo pipefail

log() { printf 'install-ha: %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else log "need root to run: $*"; exit 1
  fi
}

need=()
{ [ -x /usr/bin/pg_autoctl ] || [ -x /usr/lib/postgresql/15/bin/pg_autoctl ]; } || need+=(pg-auto-failover-cli)
[ -f /usr/share/postgresql/15/extension/pgautofailover.control ] || need+=(postgresql-15-auto-failover)
command -v pgbackrest >/dev/null 2>&1 || need+=(pgbackrest)

if [ "${#need[@]}" -eq 0 ]; then
  log "pg_auto_failover and pgBackRest already installed"
  exit 0
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
log "apt-get update"
as_root apt-get update -qq
log "apt-get install ${need[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
# Debian's pgbackrest package may ship a default config pointing at /var/lib/pgbackrest;
# agentapi-db always passes its own --config, so nothing else is set up here.
log "done"
