#!/usr/bin/env bash
# The main job: install what is needed, then bring up a local cluster with the schema
# and demo data. Extra arguments go to `agentapi-db up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
exec "${PYTHON:-python3}" -m agentapi_db.cli up --demo "$@"
