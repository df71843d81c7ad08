"""`factory local`: options are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli import cli
from factory.localcloud import control


@pytest.mark.parametrize("port", ["0", "99999", "-1"])
def test_up_refuses_a_port_out_of_range_before_starting(
    port: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr(control, "up", lambda *a, **kw: started.append(a))
    result = CliRunner().invoke(
        cli, ["local", "up", "--no-instances", "--state-dir", str(tmp_path), "--port", port]
    )
    assert result.exit_code == 2
    assert "is not in the range 1<=x<=65535" in result.output
    assert started == []
