"""``kerasfed launch``: start TensorFlow multi-worker processes, like torchrun.

Each worker gets a ``TF_CONFIG`` (free ports on 127.0.0.1, or a host list, or the
one already in the environment), its output is prefixed with its rank, a failure
stops the group (and optionally restarts it), and no process outlives the launch.

This package must not import TensorFlow: the launcher has to start fast.
"""

from kerasfed.launch._cli import add_parser
from kerasfed.launch._output import PrefixedOutput
from kerasfed.launch._plan import NUM_WORKERS_VAR
from kerasfed.launch._plan import RANK_VAR
from kerasfed.launch._plan import RESTART_COUNT_VAR
from kerasfed.launch._plan import LaunchArgumentError
from kerasfed.launch._plan import LaunchPlan
from kerasfed.launch._plan import make_plan
from kerasfed.launch._plan import pick_free_ports
from kerasfed.launch._process_group import Outcome
from kerasfed.launch._process_group import ProcessGroup
from kerasfed.launch._process_group import WorkerSpec
from kerasfed.launch._runner import run

__all__ = [
    "LaunchArgumentError",
    "LaunchPlan",
    "NUM_WORKERS_VAR",
    "Outcome",
    "PrefixedOutput",
    "ProcessGroup",
    "RANK_VAR",
    "RESTART_COUNT_VAR",
    "WorkerSpec",
    "add_parser",
    "make_plan",
    "pick_free_ports",
    "run",
]
