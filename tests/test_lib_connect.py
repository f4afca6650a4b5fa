"""connect() with no database URL falls back to the local cluster, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentapi_db import Settings, connect
from agentapi_db.errors import ConfigurationError


def test_missing_binaries_give_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("AGENTAPI_PG_BINDIR", str(empty_bin))
    monkeypatch.setenv("AGENTAPI_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(ConfigurationError) as info:
        connect(Settings())
    message = str(info.value)
    assert "no database URL configured" in message
    assert "apt-get install" in message
