#!/usr/bin/env bash
# The test command: dependencies, lint, types, then the suite against real PostgreSQL.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k cluster`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

bash scripts/install-deps.sh

echo "== ruff check"
"$PY" -m ruff check .
echo "== mypy (strict)"
"$PY" -m mypy
echo "== pytest"
status=0
"$PY" -m pytest -q -ra "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
