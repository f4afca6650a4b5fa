#!/usr/bin/env bash
# The test command: dependencies, lint, types, then the suite against real PostgreSQL
# 15 (Debian), 16, 17 and 18 (scripts/install-pg-versions.sh):
#
#   PostgreSQL 15, 18   the whole suite (superuser deploy; identity cache AND portable)
#   PostgreSQL 16, 17   access matrix, access roles, security regressions, migrations,
#                       verify, managed deploy
#   PostgreSQL 15, 18   access matrix, access roles, security regressions again, on a
#                       database the non-superuser owner deployed (AGENTAPI_TEST_DEPLOY=
#                       managed, portable helpers): what managed-PostgreSQL users get
#
# Every run prints a header; the command fails if any run fails or collects nothing
# (pytest exit 5), and skips fail a run (tests/conftest.py). Tests marked
# requires_pg_cron, requires_pg_auto_failover or requires_pgbackrest are deselected
# (not skipped), with the reason printed, on a server without that component: Debian 12
# packages pg_cron and pg_auto_failover for 15 only, and its pgBackRest 2.45 supports up
# to 15. They run in the PostgreSQL 15 run (scripts/install-ha.sh installs the engines).
#
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k cluster`; then the
# suite runs once per version in AGENTAPI_TEST_VERSIONS (default: 15) with those
# arguments instead of the matrix. AGENTAPI_TEST_VERSIONS="15 18" without arguments
# runs only the matrix's runs on those versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
root=${AGENTAPI_PG_ROOT:-/opt/agentapi-db/postgresql}

bash scripts/install-deps.sh --require-identity-cache
bash scripts/install-pg-versions.sh
bash scripts/install-ha.sh

echo "== ruff check"
"$PY" -m ruff check .
echo "== mypy (strict)"
"$PY" -m mypy

for major in ${AGENTAPI_TEST_VERSIONS:-}; do
  case "$major" in
    15|16|17|18) ;;
    *) echo "test.sh: AGENTAPI_TEST_VERSIONS holds $major; the versions are 15 16 17 18" >&2; exit 2 ;;
  esac
done

bindir_of() {
  if [ "$1" = 15 ]; then printf '/usr/lib/postgresql/15/bin'; else printf '%s/%s/bin' "$root" "$1"; fi
}

SUBSET=(tests/test_access_matrix.py tests/test_access_roles.py tests/test_security_regressions.py
        tests/test_migrations.py tests/test_verify.py tests/test_managed_deploy.py)
MANAGED_SUBSET=(tests/test_access_matrix.py tests/test_access_roles.py tests/test_security_regressions.py)

results=()
failed=0
# run MAJOR DEPLOY LABEL PYTEST-ARGS...
run() {
  local major=$1 deploy=$2 label=$3 bindir status=0 started
  shift 3
  bindir=$(bindir_of "$major")
  echo "== pytest: $("$bindir/postgres" --version) ($bindir), deploy=$deploy, $label"
  started=$SECONDS
  AGENTAPI_PG_BINDIR=$bindir AGENTAPI_TEST_DEPLOY=$deploy \
    "$PY" -m pytest -q -ra "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
  fi
  results+=("PostgreSQL $major, deploy=$deploy, $label: $([ "$status" -eq 0 ] && echo ok || echo "FAILED (exit $status)") in $((SECONDS - started)) s")
  [ "$status" -eq 0 ] || failed=1
}

wanted() {
  [ -z "${AGENTAPI_TEST_VERSIONS:-}" ] && return 0
  [[ " $AGENTAPI_TEST_VERSIONS " == *" $1 "* ]]
}

if [ "$#" -gt 0 ]; then
  for major in ${AGENTAPI_TEST_VERSIONS:-15}; do
    run "$major" "${AGENTAPI_TEST_DEPLOY:-superuser}" "pytest $*" "$@"
  done
else
  if wanted 15; then run 15 superuser "whole suite" tests; fi
  if wanted 18; then run 18 superuser "whole suite" tests; fi
  if wanted 16; then run 16 superuser "matrix, roles, regressions, migrations, verify, managed deploy" "${SUBSET[@]}"; fi
  if wanted 17; then run 17 superuser "matrix, roles, regressions, migrations, verify, managed deploy" "${SUBSET[@]}"; fi
  if wanted 15; then run 15 managed "matrix, roles, regressions" "${MANAGED_SUBSET[@]}"; fi
  if wanted 18; then run 18 managed "matrix, roles, regressions" "${MANAGED_SUBSET[@]}"; fi
fi

echo "== summary"
if [ "${#results[@]}" -eq 0 ]; then
  echo "test.sh: no run matched AGENTAPI_TEST_VERSIONS=${AGENTAPI_TEST_VERSIONS:-}" >&2
  exit 1
fi
printf '  %s\n' "${results[@]}"
exit "$failed"
