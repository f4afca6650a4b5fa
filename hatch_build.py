"""Hatch build hook: ship database/**/*.sql inside the wheel as agentapi_db/_sql/**.

Editable installs are skipped on purpose: there, agentapi_db.resources reads the
repository's database/ directory directly, so edits to the SQL show up at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        sql_root = Path(self.root) / "database"
        schema = sql_root / "schema.sql"
        if not schema.is_file():
            raise RuntimeError(f"cannot build the wheel: {schema} is missing")
        for path in sorted(sql_root.rglob("*.sql")):
            rel = path.relative_to(sql_root).as_posix()
            build_data["force_include"][str(path)] = f"agentapi_db/_sql/{rel}"
