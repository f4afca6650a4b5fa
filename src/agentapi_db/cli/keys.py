"""``agentapi-db keygen``."""

from __future__ import annotations

import sys

from agentapi_db.cli.app import JsonOption, app, err_console, handles_errors, print_json
from agentapi_db.keys import EncryptionKey


@app.command("keygen")
@handles_errors
def keygen_command(json_output: JsonOption = False) -> None:
    """Print a new random 256-bit encryption key (64 hex digits) on stdout.

    Store it in a secret manager and hand it over as AGENTAPI_ENCRYPTION_KEY or
    in a file named by AGENTAPI_ENCRYPTION_KEY_FILE. It is printed once and not
    kept anywhere.
    """
    key = EncryptionKey.generate()
    if json_output:
        print_json({"key": key.reveal(), "fingerprint": key.fingerprint})
        return
    sys.stdout.write(key.reveal() + "\n")
    if sys.stderr.isatty():
        err_console.print(f"[dim]fingerprint {key.fingerprint}[/]")
