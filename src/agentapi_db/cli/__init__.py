"""The ``agentapi-db`` command line (Typer + Rich).

The Typer objects and shared helpers live in :mod:`agentapi_db.cli.app`; each
command module registers its commands on them when imported. This package imports
every command module, then :func:`main` runs the root app.
"""

from __future__ import annotations

import importlib
import importlib.util

from agentapi_db.cli.app import app

# Command modules, in the order their commands appear. Optional ones may be absent
# from a checkout (they are skipped only when the module itself does not exist; an
# ImportError raised *inside* an existing module is a bug and propagates).
_COMMAND_MODULES = (
    "migrate", "logins", "contextkeys", "localdb", "admin", "keys", "ops", "datakeys", "ha",
)


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        qualified = f"{__name__}.{name}"
        if importlib.util.find_spec(qualified) is None:
            continue
        importlib.import_module(qualified)


_load_commands()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="agentapi-db")


__all__ = ["app", "main"]
