"""Child process: a second multi-worker strategy with another cluster is refused.

`python dist_second_strategy.py PORT1 PORT2`: creates TensorFlow's own
MultiWorkerMirroredStrategy for a one-chief cluster, then asks kerasfed for one
with a one-worker cluster; prints the error kerasfed raises. One-task clusters
start without waiting for peers.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from kerasfed.distributed.strategies import StrategyInitError, get_strategy  # noqa: E402

os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"chief": [f"127.0.0.1:{sys.argv[1]}"]}, "task": {"type": "chief", "index": 0}}
)
tf.distribute.MultiWorkerMirroredStrategy()
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{sys.argv[2]}"]}, "task": {"type": "worker", "index": 0}}
)
try:
    get_strategy("multi_worker")
except StrategyInitError as error:
    print(f"StrategyInitError: {error}")
