"""The README's examples run as written and print the accuracies it states.

Each Python block of the README that prints ``val_accuracy`` runs in its own
process, as a user who pastes it into a file would run it, and must print the value
its comment states for this TensorFlow (``# 0.904 with TF 2.14, 0.922 with TF 2.21``)
within a few test examples. The docs pages that open with the same example must
show it verbatim, so the two cannot drift apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
STATED = re.compile(r"(\d\.\d{3}) with TF (\d+\.\d+)")
PRINTED = re.compile(r"^val_accuracy (\d\.\d{3})$", re.MULTILINE)
# 450 test images: 0.011 is 5 of them, room for another CPU's float rounding.
TOLERANCE = 0.011


def _examples() -> dict[str, str]:
    """The README's runnable examples, keyed by the kerasfed call they show."""
    blocks = [b for b in PYTHON_BLOCK.findall(README.read_text()) if "print(f\"val_accuracy" in b]
    return {re.search(r"kerasfed\.(fit_\w+)\(", b).group(1): b for b in blocks}


def _stated_accuracy(block: str) -> dict[str, float]:
    comment = block.strip().splitlines()[-1].split("#", 1)[1]
    return {tf: float(value) for value, tf in STATED.findall(comment)}


def test_readme_has_one_example_per_half_each_stating_what_it_prints():
    examples = _examples()
    assert set(examples) == {"fit_distributed", "fit_federated"}
    for block in examples.values():
        assert set(_stated_accuracy(block)) == {"2.14", "2.21"}, block.strip().splitlines()[-1]


@pytest.mark.parametrize("page,call", [("docs/distributed.md", "fit_distributed"), ("docs/federated.md", "fit_federated")])
def test_docs_pages_open_with_the_readme_example(page, call):
    first_block = PYTHON_BLOCK.search((ROOT / page).read_text()).group(1)
    assert first_block == _examples()[call]


@pytest.mark.native
@pytest.mark.parametrize("call", ["fit_distributed", "fit_federated"])
def test_readme_example_prints_the_stated_accuracy(call, tmp_path):
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("sklearn")  # the digits ship inside scikit-learn
    block = _examples()[call]
    script = tmp_path / "example.py"
    script.write_text(block)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = PRINTED.search(proc.stdout)
    assert printed, proc.stdout[-3000:]
    stated = _stated_accuracy(block)
    version = ".".join(tf.__version__.split(".")[:2])
    if version in stated:
        assert float(printed.group(1)) == pytest.approx(stated[version], abs=TOLERANCE)
    else:  # a TensorFlow the README states no number for: it must still learn
        assert float(printed.group(1)) >= min(stated.values()) - 0.05
