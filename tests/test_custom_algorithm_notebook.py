"""examples/custom_algorithm.ipynb runs top to bottom: FedDyn written by a user, trained.

The notebook asserts in its own cells that every algorithm learned; here it is
executed as a reader would (a fresh kernel, from the top), with no error output
and without TensorFlow's start-up lines. It runs in the default environment
(matplotlib is there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_custom_algorithm_notebook_runs_and_feddyn_learns(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    notebook = nbformat.read(ROOT / "examples" / "custom_algorithm.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    for name in ("FedAvg", "SCAFFOLD", "FedDyn"):
        assert f"{name}" in text and "test accuracy after 20 rounds" in text
    assert "Unable to register" not in text and "cuda" not in text.lower()
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
