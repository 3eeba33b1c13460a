"""examples/xor.py runs in every environment and each way of training learns XOR.

It runs in its own process, as a user runs it: it splits the CPU into two
logical devices before TensorFlow starts, which a pytest process cannot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kerasfed._compat import tff_available

pytestmark = pytest.mark.native

ROOT = Path(__file__).resolve().parents[1]


def test_xor_reaches_090_centrally_distributed_and_federated_on_every_engine(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "xor.py")], cwd=tmp_path, capture_output=True,
        text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracies = dict(re.findall(r"^(\S+).*test accuracy (\d\.\d+)", proc.stdout, re.MULTILINE))
    expected = {"centrally", "fit_distributed", "fit_federated"}
    assert expected <= set(accuracies), proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "test accuracy" in line]
    assert len(lines) == (4 if tff_available() else 3), proc.stdout
    assert all(float(re.search(r"test accuracy (\d\.\d+)", line).group(1)) >= 0.9 for line in lines), proc.stdout
    assert "2 replicas" in proc.stdout
