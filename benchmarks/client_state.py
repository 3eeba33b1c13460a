"""Per-client state in flat memory: 10,000 clients x 200k float32 values (8 GB).

Plays the rounds a ``TopK`` residual (or SCAFFOLD's control variate) goes
through, without training: each round reads the sampled clients' rows, adds an
update and writes them back, then saves a checkpoint (the journal of the rows
changed). First pass: every client once (``clients / per_round`` rounds), then
``--extra-rounds`` rounds of random clients. Prints the resident memory (RSS:
anonymous and file-mapped), the round's read+write time, and each checkpoint's
time and size; then the cost of a full save (what a compaction writes) and of
restoring the store from the checkpoint.

  .venv/bin/python benchmarks/client_state.py                      # the full 8 GB case
  .venv/bin/python benchmarks/client_state.py --clients 1000 --values 20000   # quick

Needs about 3x the state's size of free disk space in ``--directory``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kerasfed.federated import checkpoint as ckpt  # noqa: E402
from kerasfed.federated.client_state import ClientStateStore  # noqa: E402
from kerasfed.federated.engines.base import NeutralState  # noqa: E402


def memory_mib() -> dict[str, float]:
    """This process's resident memory (VmRSS, RssAnon, RssFile) and peak (VmHWM)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


def folder_mib(path: str) -> float:
    """Disk space the files under ``path`` take (sparse files count what is written)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


def _checkpoint(rounds: int) -> ckpt.Checkpoint:
    return ckpt.Checkpoint(rounds_completed=rounds, seed=0, fingerprint={}, round_logs=[],
                           state=NeutralState(weights=[np.zeros(1, np.float32)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--values", type=int, default=200_000, help="float32 values per client")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--extra-rounds", type=int, default=20)
    parser.add_argument("--budget-mib", type=float, default=256,
                        help="the store's memory budget (default 256 MiB)")
    parser.add_argument("--directory", default=None, help="where files go (default: a temp dir)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="kerasfed-bench-client-state-", dir=args.directory)
    rng = np.random.default_rng(0)
    update = rng.normal(size=(args.per_round, args.values)).astype(np.float32)
    state_mib = args.clients * args.values * 4 / 2**20
    print(f"{args.clients} clients x {args.values} float32 = {state_mib:.0f} MiB of state; "
          f"{args.per_round} clients per round; memory budget {args.budget_mib:.0f} MiB")
    try:
        store = ClientStateStore(memory_budget_bytes=int(args.budget_mib * 2**20),
                                 directory=os.path.join(work, "spill"))
        table = store.table("0/residual", [np.zeros(args.values, np.float32)])
        start = memory_mib()
        print(f"before the first round: RSS {start['VmRSS']:.0f} MiB "
              f"(anonymous {start['RssAnon']:.0f}, file {start['RssFile']:.0f})")
        first_pass = -(-args.clients // args.per_round)
        order = rng.permutation(args.clients)
        rows = []
        for round_num in range(first_pass + args.extra_rounds):
            if round_num < first_pass:
                picked = order[round_num * args.per_round:(round_num + 1) * args.per_round]
            else:
                picked = rng.choice(args.clients, args.per_round, replace=False)
            cids = [f"client{i:06d}" for i in picked]
            started = time.perf_counter()
            residual = table.read(cids)[0]
            residual += update[:len(cids)]
            table.write(cids, [residual])
            del residual
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            ckpt.save_checkpoint(os.path.join(work, "checkpoint"), _checkpoint(round_num + 1),
                                 client_states=store)
            save_seconds = time.perf_counter() - started
            rows.append((round_num + 1, memory_mib(), seconds, save_seconds))
            if round_num % max(1, (first_pass + args.extra_rounds) // 12) == 0 or \
                    round_num in (first_pass - 1, first_pass + args.extra_rounds - 1):
                m = rows[-1][1]
                print(f"  round {round_num + 1:4d}: {len(table):6d} clients stored "
                      f"({table.disk_rows} on disk), RSS {m['VmRSS']:6.0f} MiB (anonymous "
                      f"{m['RssAnon']:.0f}, file {m['RssFile']:.0f}), read+write "
                      f"{seconds * 1e3:6.0f} ms, checkpoint {save_seconds * 1e3:6.0f} ms")
        end = memory_mib()
        journal = ckpt.load_checkpoint(os.path.join(work, "checkpoint")).client_states.files
        per_round_mib = args.per_round * args.values * 4 / 2**20
        saves = [r[3] for r in rows[first_pass:]] or [r[3] for r in rows]
        io = [r[2] for r in rows[first_pass:]] or [r[2] for r in rows]
        print(f"RSS: before {start['VmRSS']:.0f} MiB, after {end['VmRSS']:.0f} MiB "
              f"(growth {end['VmRSS'] - start['VmRSS']:.0f} MiB for {state_mib:.0f} MiB of "
              f"state), peak {end['VmHWM']:.0f} MiB")
        print(f"store: {store.memory_bytes / 2**20:.0f} MiB in memory, "
              f"{folder_mib(os.path.join(work, 'spill')):.0f} MiB on disk")
        print(f"per round (after the first pass, median): read+write "
              f"{np.median(io) * 1e3:.0f} ms, checkpoint {np.median(saves) * 1e3:.0f} ms for "
              f"{per_round_mib:.0f} MiB of changed rows "
              f"({per_round_mib / max(1e-9, np.median(saves)):.0f} MiB/s)")
        print(f"checkpoint journal: {len(journal)} files, "
              f"{sum(r for _, _, r in journal)} rows, "
              f"{folder_mib(os.path.join(work, 'checkpoint')):.0f} MiB")

        started = time.perf_counter()
        ckpt.save_checkpoint(os.path.join(work, "full"), _checkpoint(0), client_states=store)
        full = time.perf_counter() - started
        print(f"a full save (a compaction writes this): {full:.1f} s for {state_mib:.0f} MiB "
              f"({state_mib / full:.0f} MiB/s), RSS {memory_mib()['VmRSS']:.0f} MiB")
        shutil.rmtree(os.path.join(work, "full"))
        store.close()
        del table

        started = time.perf_counter()
        restored = ClientStateStore(memory_budget_bytes=int(args.budget_mib * 2**20),
                                    directory=os.path.join(work, "spill"))
        directory = os.path.join(work, "checkpoint")
        ckpt.restore_client_states(directory, ckpt.load_checkpoint(directory), restored)
        print(f"restore from the checkpoint: {time.perf_counter() - started:.1f} s, "
              f"{len(restored.tables['0/residual'])} clients, RSS {memory_mib()['VmRSS']:.0f} "
              f"MiB, peak {memory_mib()['VmHWM']:.0f} MiB")
        restored.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
