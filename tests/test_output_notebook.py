"""``fit_federated`` in a Jupyter notebook without ipywidgets: the saved file holds one
progress display in its final state, and no TensorFlow start-up lines.

The notebook runs in a real kernel (nbclient), as a user's would, and the test reads
the outputs nbclient saves.
"""

from __future__ import annotations

import json

import pytest

from kerasfed._tf_startup import is_startup_noise

pytestmark = pytest.mark.native

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

CELLS = [
    """
import kerasfed
with kerasfed.quiet_tensorflow_startup():
    import tensorflow as tf
""",
    """
import json
import numpy as np
from kerasfed._compat import keras

rng = np.random.default_rng(0)
x = rng.normal(size=(96, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int32")

def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model

clients = kerasfed.partition(x, y, num_clients=4, seed=0)
""",
    """
history = kerasfed.fit_federated(make_model, clients, rounds=5, clients_per_round=2,
                                 batch_size=8, validation_data=(x, y), engine="native", seed=0)
""",
    "print(json.dumps(history.history))",
]


def test_a_saved_notebook_shows_one_progress_display_and_no_startup_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the kernel inherits this
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.strip()) for c in CELLS])
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(notebook, tmp_path / "saved.ipynb")
    saved = nbformat.read(tmp_path / "saved.ipynb", as_version=4)
    outputs = [cell.get("outputs", []) for cell in saved.cells]
    assert not [o for cell in outputs for o in cell if o["output_type"] == "error"], outputs

    streams = "".join(o.get("text", "") for cell in outputs for o in cell if o["output_type"] == "stream")
    noise = [line for line in streams.splitlines() if is_startup_noise(line.encode())]
    assert noise == [] and "absl::InitializeLog" not in streams and "cuDNN" not in streams

    # The training cell: the line naming the engine, then one display in its final state.
    training = outputs[2]
    displays = [o for o in training if o["output_type"] in ("display_data", "update_display_data")]
    text = "".join(o.get("text", "") for o in training if o["output_type"] == "stream")
    assert len(displays) == 1, training
    assert text.startswith("fit_federated: native engine") and len(text.splitlines()) == 1
    assert "\r" not in text
    history = json.loads(outputs[3][0]["text"])
    final = displays[0]["data"]["text/plain"]
    assert final.startswith("Round 5/5") and "in all" in final, final
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert f"{key} {history[key][-1]:.4f}" in final, final
    assert '<progress value="5" max="5"' in displays[0]["data"]["text/html"]
