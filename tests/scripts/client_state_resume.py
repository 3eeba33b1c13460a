"""A native-engine training with TopK residuals and a checkpoint_dir, as a child process.

Usage: ``client_state_resume.py CHECKPOINT_DIR OUT.npz pause=ROUND|compare``.
Every client state row is kept on disk (a memory budget of 0). With
``pause=ROUND``, the round of that index (from 0) prints ``AGGREGATED <round>``
after ``TopK`` has written the round's residuals, then waits on stdin forever, so
that a test can SIGKILL it in the middle of that round. With ``compare`` it
trains (resuming what CHECKPOINT_DIR holds), then trains the same run again
uninterrupted, without a checkpoint, in this process, saves both final weights
to OUT.npz (``resumed_<i>``, ``uninterrupted_<i>``) and prints ``DONE <rounds>``
with the rounds of each History.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import ClassVar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

FIT_KWARGS = dict(rounds=4, clients_per_round=3, local_epochs=2, batch_size=4, seed=7,
                  verbose=0, engine="native")


def main(checkpoint_dir: str, out: str, pause_round: int | None) -> None:
    from fed_resume import make_problem  # noqa: PLC0415

    import kerasfed  # noqa: PLC0415
    from kerasfed.federated import client_state  # noqa: PLC0415
    from kerasfed.federated.aggregators import Transform  # noqa: PLC0415

    @dataclasses.dataclass(frozen=True)
    class PauseAfterTopK(Transform):
        name: ClassVar[str] = "pause_after_top_k"

        def apply(self, updates, context, state):
            if context.round_num == pause_round:
                print(f"AGGREGATED {context.round_num}", flush=True)
                sys.stdin.readline()  # until the test kills this process
            return updates, state, {}

        def __repr__(self):  # the same in the fingerprint whatever the pause
            return "PauseAfterTopK()"

    # Every row on disk: the resume must also hold for the memory-mapped files.
    client_state.default_memory_budget = lambda: 0
    chain = [kerasfed.TopK(0.3), PauseAfterTopK(), "mean"]
    model, clients = make_problem()
    resumed = kerasfed.fit_federated(model, clients, checkpoint_dir=checkpoint_dir,
                                     aggregator=chain, **FIT_KWARGS)
    weights = {f"resumed_{i}": w for i, w in enumerate(model.get_weights())}
    model, clients = make_problem()
    whole = kerasfed.fit_federated(model, clients, aggregator=chain, **FIT_KWARGS)
    weights.update({f"uninterrupted_{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(out, **weights)
    print(f"DONE {len(resumed.history['loss'])} {len(whole.history['loss'])}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[3]
    main(sys.argv[1], sys.argv[2], int(mode[len("pause="):]) if mode.startswith("pause=") else None)
