"""The README's demo, the federated MNIST script and the notebook run end to end.

Each runs in its own process, as a user would run it (the demo must split the CPU
into two logical devices before TensorFlow starts, which a pytest process that
already imported TensorFlow cannot do).
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.federated

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("tensorflow_federated")


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_demo_runs_both_parts_and_writes_the_plot(tmp_path):
    proc = _run([str(ROOT / "examples" / "demo.py"), "--epochs", "3", "--rounds", "3", "--out", str(tmp_path)], tmp_path)
    assert "replicas: 2" in proc.stdout
    assert "native engine: test accuracy after 3 rounds" in proc.stdout
    assert "tff engine: test accuracy after 3 rounds" in proc.stdout
    assert "their accuracies differ by 0.0e+00" in proc.stdout
    # It says what it does before each long step, and each engine's total time.
    assert "starting TensorFlow" in proc.stdout and "building it, then 3 rounds" in proc.stdout
    assert proc.stdout.count(" s per round, ") == 2 and proc.stdout.count(" s in all") == 3
    png = tmp_path / "demo_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_federated_mnist_script_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 50)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    proc = _run(
        [str(ROOT / "examples" / "federated_mnist.py"), "--data-dir", str(tmp_path), "--clients", "4",
         "--clients-per-round", "2", "--rounds", "2", "--batch-size", "20"],
        tmp_path,
    )
    assert "MNIST: 200 train / 50 test; 4 iid clients" in proc.stdout
    assert "test accuracy:" in proc.stdout


@pytest.mark.parametrize("engine", ["tff", "native"])
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("KERASFED_ENGINE", engine)  # the notebook's ENGINE
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "examples" / "federated_digits.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "test accuracy:" in text
    # kerasfed.plot_history's figures, each shown once (by the inline backend).
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
