"""Where a CNN client step's time goes: each op of the FedAvg paper's CNN at batch 20.

The native engine trains the CNN one client after another at the speed of a fused
one-client `tf.function` loop (benchmarks/federated_round.py), so its round time
is the sum of TensorFlow's own kernels. This prints, side by side in one run, the
forward and backward ops of one training step (batch 20, 28x28 MNIST, "same"
padding) with their GFLOP/s against this machine's float32 matmul peak measured
in the same run, and the share of the step each op takes: the ceiling any
one-client-at-a-time design (kerasfed's, pfl-research's, TFF's) has here.

  python3 dev.py bench --env latest cnn_ops
  python3 dev.py bench cnn_ops          # TF 2.14
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf


def timed(fn, repeats: int) -> float:
    """Seconds per call: the fastest of 5 blocks of ``repeats`` calls (the least disturbed)."""
    fn()  # trace and warm up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        tf.nest.flatten(out)[0].numpy()  # wait for the work
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    b = args.batch
    rnd = tf.random.normal
    x1, k1, g1 = rnd([b, 28, 28, 1]), rnd([5, 5, 1, 32]), rnd([b, 28, 28, 32])
    x2, k2, g2 = rnd([b, 14, 14, 32]), rnd([5, 5, 32, 64]), rnd([b, 14, 14, 64])
    a3, w3, g3 = rnd([b, 3136]), rnd([3136, 512]), rnd([b, 512])
    one = [1, 1, 1, 1]
    conv1 = 2 * b * 28 * 28 * 25 * 32
    conv2 = 2 * b * 14 * 14 * 800 * 64
    dense = 2 * b * 3136 * 512
    ops = {
        "conv1 forward (1 -> 32 channels)": (lambda: tf.nn.conv2d(x1, k1, 1, "SAME"), conv1),
        "conv1 kernel gradient": (lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x1, filter_sizes=[5, 5, 1, 32], out_backprop=g1, strides=one,
            padding="SAME"), conv1),
        "conv2 forward (32 -> 64 channels)": (lambda: tf.nn.conv2d(x2, k2, 1, "SAME"), conv2),
        "conv2 kernel gradient": (lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x2, filter_sizes=[5, 5, 32, 64], out_backprop=g2, strides=one,
            padding="SAME"), conv2),
        "conv2 input gradient": (lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=[b, 14, 14, 32], filter=k2, out_backprop=g2, strides=one,
            padding="SAME"), conv2),
        "dense 3136x512 forward": (lambda: tf.matmul(a3, w3), dense),
        "dense kernel gradient": (lambda: tf.matmul(a3, g3, transpose_a=True), dense),
        "dense input gradient": (lambda: tf.matmul(g3, w3, transpose_b=True), dense),
    }
    m = tf.random.normal([2048, 2048])
    peak_s = timed(tf.function(lambda: tf.matmul(m, m)), 3)
    peak = 2 * 2048**3 / peak_s / 1e9
    print(f"TensorFlow {tf.__version__}; float32 matmul 2048x2048: {peak:.0f} GFLOP/s (the peak)")
    rows = [(name, timed(tf.function(fn), args.repeats), flops) for name, (fn, flops) in ops.items()]
    total = sum(t for _, t, _ in rows)
    print(f"{'op (batch ' + str(b) + ')':36s} {'ms':>7s} {'GFLOP/s':>8s} {'% peak':>7s} {'% of ops':>8s}")
    for name, seconds, flops in rows:
        rate = flops / seconds / 1e9
        print(f"{name:36s} {seconds * 1e3:7.3f} {rate:8.0f} {100 * rate / peak:6.0f}% "
              f"{100 * seconds / total:7.0f}%")
    flops = sum(f for _, _, f in rows)
    rate = flops / total / 1e9
    print(f"{'these ops together':36s} {total * 1e3:7.3f} {rate:8.0f} {100 * rate / peak:6.0f}%")


if __name__ == "__main__":
    main()
