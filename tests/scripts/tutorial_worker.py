"""The script a Keras tutorial writes, run under `kerasfed launch`: TensorFlow
imported, the model built and compiled, the data made, then fit_distributed. No
strategy is created: the launcher's bootstrap makes it before this script runs.

Usage: tutorial_worker.py OUT [--progress]
"""

import os
import sys

import numpy as np
import tensorflow as tf  # noqa: F401  (a tutorial imports it first)

import dist_common  # tests/scripts is sys.path[0], as with `python tutorial_worker.py`
import kerasfed

out = sys.argv[1]
progress = "--progress" in sys.argv
x, y = dist_common.make_data(64)
model = dist_common.build_model()
history = kerasfed.fit_distributed(model, x, y, batch_size=16, epochs=2, shuffle=False,
                                   verbose=1 if progress else 0)
rank = os.environ["KERASFED_RANK"]
dist_common.save_weights(os.path.join(out, f"tutorial.rank{rank}.npz"), history.model,
                         loss=np.asarray(history.history["loss"]))
print(f"done {__name__}", flush=True)
