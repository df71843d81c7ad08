"""`make demo`'s script end to end: local cloud, build + verify base, channel, provenance,
rollout with live verification."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from factory.localcloud import control

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's instances need root")
def test_demo_builds_verifies_publishes_and_proves(tmp_path: Path) -> None:
    state = tmp_path / "local"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["FACTORY_LOCAL_STATE_DIR"] = str(state)
    try:
        proc = subprocess.run(
            ["bash", str(REPO / "infra" / "demo.sh")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        control.down(state)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    ami = re.search(r"AMI:\s+(ami-[0-9a-f]+)", output)
    assert ami, output[-2000:]
    assert re.search(r"tests:\s+verified: \d+ passed, 0 failed", output)
    assert f"base/dev  {ami.group(1)}" in output
    assert f"{ami.group(1)} is verified, in channel base/dev, with verified provenance" in output
    # the rollout replaced the group's instances and the suite passed on one of them
    assert re.search(r"demo-web: Successful 100%", output), output[-3000:]
    assert re.search(r"live verification: passed \(\d+ passed, 0 failed", output)
