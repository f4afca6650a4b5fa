"""``agentapi-db keygen`` and ``agentapi-db key-ids``."""

from __future__ import annotations

import sys

from rich.markup import escape

from agentapi_db.cli.app import (
    JsonOption,
    app,
    console,
    err_console,
    handles_errors,
    print_json,
)
from agentapi_db.config import Settings
from agentapi_db.crypto.sealed import key_id_of
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


@app.command("key-ids")
@handles_errors
def key_ids_command(json_output: JsonOption = False) -> None:
    """List the configured master keys by id, never the keys themselves.

    For each key: its id in the key ring (AGENTAPI_ENCRYPTION_KEYS) or its role
    (primary, old), the key id that ag1 ciphertexts and errors name, and its
    fingerprint. The first is the primary: it wraps new data keys.
    """
    settings = Settings.from_env()
    primary = settings.require_key()
    keys = (primary, *settings.previous_keys)
    names = settings.key_ids or ("primary", *(["old"] if settings.old_encryption_key else []))
    rows = [{"id": name, "key_id": key_id_of(key.raw_bytes()), "fingerprint": key.fingerprint,
             "primary": key is primary} for name, key in zip(names, keys, strict=True)]
    if json_output:
        print_json({"keys": rows})
        return
    for row in rows:
        role = " (primary)" if row["primary"] else ""
        console.print(f"{escape(str(row['id']))}{role}: key id {row['key_id']}, "
                      f"fingerprint {row['fingerprint']}")
