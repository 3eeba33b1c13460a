"""TensorFlow's own multi-worker tutorial, shortened: its strategy at the top, the
model built in its scope, plain model.fit. Must keep working under the bootstrap."""

import os
import sys

import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
x = np.random.default_rng(0).random((64, 4)).astype("float32")
y = (x.sum(axis=1) > 2).astype("float32")
with strategy.scope():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(1, "sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
model.fit(dataset, epochs=2, verbose=0)
with open(os.path.join(sys.argv[1], f"tf_tutorial.rank{os.environ['KERASFED_RANK']}"), "w") as f:
    f.write(str(strategy.num_replicas_in_sync))
