#!/usr/bin/env python3
"""Seconds per FedAvg round, side by side: kerasfed's engines, TFF, pfl-research, Flower.

The same work for every contestant (the FedAvg paper's setting, McMahan et al. 2017):
20 clients of 300 examples, 1 local epoch, batch 20, client SGD lr 0.1, server SGD
lr 1.0 (plain FedAvg), on the paper's 2NN (200-200) and its CNN (5x5 conv 32, pool,
5x5 conv 64, pool, dense 512; "same" padding, as TFF's tutorials and this
benchmark's earlier versions).

Contestants (each in its own child process, one after another, with the
interpreter of the environment it needs):

  native_k3     kerasfed.fit_federated(engine="native"), Keras 3 (TF 2.21)   .venv-latest
  native_k2     kerasfed.fit_federated(engine="native"), Keras 2 (TF 2.14)   .venv
  kerasfed_tff  kerasfed.fit_federated(engine="tff")                         .venv
  tff_direct    FedAvg written directly with TFF 0.87 (the reference)        .venv
  fused_loop    one tf.function of local SGD per client over plain tensors,
                clients one after another (the floor), Keras 3              .venv-latest
  pfl           Apple pfl-research 0.6.0 FedAvg, TF backend, Keras 3         .venv-peers
  flwr          Flower 1.42 simulation (Ray, 2 actors, model.fit per client) .venv-peers
  native_k3_100 native_k3 with 100 clients per round: the scaling row        .venv-latest
  native_k3_1t  native_k3 with TF_NUM_INTRAOP_THREADS=1: the sequential form
                then trains one client per core side by side                .venv-latest
  user_k3       native_k3 with FedAvg written by a user on kerasfed.Algorithm
                (``UserFedAvg`` below): a user's algorithm at a built-in's speed  .venv-latest
  user_k2       the same, Keras 2 (TF 2.14)                                  .venv

pfl-research 0.6.0 is benchmarked with ONE FIX and ONE SETTING: its `TFModel`
keys the model's variables by `variable.name`, and in Keras 3 every layer's
variables are named `kernel` and `bias`, so a multi-layer model collapses to two
entries and pfl resets, differences and averages only the last layer (the others
silently train sequentially across users). Here the variables are keyed by their
full path (`variable.path`, e.g. `dense_1/kernel`) in a subclass of `TFModel`.
pfl also evaluates every sampled user before and after local training in the
first central iteration whatever `evaluation_frequency` says (`0 % n == 0`);
that is turned off (`do_evaluation=False` on the training contexts).

Printed per model: median seconds per round over the rounds after the first (which
traces), ratio to TFF direct, seconds from the call to the end of round 1, GFLOP/s
achieved and its share of this machine's float32 matmul peak (measured in the same
run: a 2048x2048 tf.matmul chain in the Keras 3 environment, before and after the
contestants, the higher of the two), and the global model's loss and accuracy on
3,000 of the training examples after the last round, so that a contestant that
does not train is visible (chance: loss 2.30, accuracy 0.10). The scaling row's
ratio to native_k3 is printed (goal: at most 5x the time for 5x the work); with
--quick it rests on one timed round and is noise.

FLOPs per round are counted analytically: 6 x the forward multiply-adds of the
Dense and Conv2D layers (forward 2 FLOPs per multiply-add, backward about twice
the forward) x examples per round. For 20 x 300 examples: 2NN 7.16 GFLOP; CNN
441.8 GFLOP with "same" padding (the issue's "about 150 GFLOP" is the CNN with
"valid" padding, as in the paper's Keras ports: 153.6 GFLOP). Results are also
written as JSON to out/federated_round_<time>.json.

  python3 dev.py bench federated_round [--data-dir ../shared/data/mnist] [--rounds 8]
      [--models 2nn,cnn] [--contestants native_k3,tff_direct,...] [--quick] [--setup]

A contestant whose environment is missing is skipped with the reason (`--setup`
creates the environments through dev.py first); one that fails is reported with
the end of its log (out/federated_round_logs/) and the others go on. Without
--data-dir the examples are synthetic MNIST-shaped arrays whose labels are a fixed
linear function of the pixels (learnable, so the loss check means something); the
time per round does not depend on the values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
NUM_CLIENTS, CLIENT_SIZE, BATCH, CLIENT_LR, SERVER_LR = 20, 300, 20, 0.1, 1.0
SCALED_CLIENTS = 100
EVAL_EXAMPLES = 3000
MATMUL_N = 2048


@dataclasses.dataclass(frozen=True)
class Env:
    folder: str  # relative to the repository root
    dev_name: str  # `python3 dev.py env NAME`
    what: str


ENVS = {
    "keras3": Env(".venv-latest", "latest", "TF 2.21, Keras 3"),
    "keras2": Env(".venv", "default", "TF 2.14, Keras 2, TFF 0.87"),
    "peers": Env(".venv-peers", "peers", "TF 2.21, Keras 3, pfl 0.6.0, flwr 1.42"),
}


@dataclasses.dataclass(frozen=True)
class Contestant:
    env: str
    label: str
    clients: int = NUM_CLIENTS
    environment: tuple[tuple[str, str], ...] = ()  # variables set before TensorFlow starts


CONTESTANTS = {
    "native_k3": Contestant("keras3", "kerasfed native engine, Keras 3"),
    "native_k2": Contestant("keras2", "kerasfed native engine, Keras 2"),
    "kerasfed_tff": Contestant("keras2", "kerasfed TFF engine"),
    "tff_direct": Contestant("keras2", "FedAvg written directly in TFF"),
    "fused_loop": Contestant("keras3", "fused tf.function loop, Keras 3"),
    "pfl": Contestant("peers", "pfl-research 0.6.0 (keyed by path)"),
    "flwr": Contestant("peers", "Flower 1.42 simulation (Ray)"),
    "native_k3_100": Contestant("keras3", "native, Keras 3, 100 clients", SCALED_CLIENTS),
    "native_k3_1t": Contestant("keras3", "native, Keras 3, one thread per op",
                               environment=(("TF_NUM_INTRAOP_THREADS", "1"),)),
    "user_k3": Contestant("keras3", "user-written FedAvg, native, Keras 3"),
    "user_k2": Contestant("keras2", "user-written FedAvg, native, Keras 2"),
}


# --------------------------------------------------------------------------- child side
# Everything below up to `run_child` runs inside a contestant's process; it imports
# TensorFlow (and the contestant's framework) lazily so that the parent needs none.


def _keras():
    import tensorflow as tf

    return tf.keras


def build_model(name: str):
    keras = _keras()
    layers = keras.layers
    if name == "cnn":
        body = [
            layers.Reshape((28, 28, 1)),
            layers.Conv2D(32, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 5, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
        ]
    else:
        body = [layers.Flatten(), layers.Dense(200, activation="relu"), layers.Dense(200, activation="relu")]
    model = keras.Sequential([keras.Input((28, 28)), *body, layers.Dense(10, activation="softmax")])
    model.compile(
        optimizer=keras.optimizers.SGD(CLIENT_LR),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def forward_macs(model) -> int:
    """Multiply-adds of one example's forward pass through the Dense and Conv2D layers."""
    keras = _keras()
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            macs += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
            _, oh, ow, _ = layer.output.shape
            macs += int(oh) * int(ow) * kh * kw * cin * cout
    return macs


def client_arrays(data_dir: str | None, num_clients: int) -> dict:
    import numpy as np

    n = num_clients * CLIENT_SIZE
    if data_dir:
        from kerasfed.datasets import load_mnist

        (x, y), _ = load_mnist(data_dir)
        x, y = x[:n].astype("float32") / 255.0, y[:n].astype("int32")
    else:
        rng = np.random.default_rng(0)
        x = rng.random((n, 28, 28), dtype=np.float32)
        projection = rng.standard_normal((28 * 28, 10)).astype("float32")
        y = np.argmax((x.reshape(n, -1) - 0.5) @ projection, axis=1).astype("int32")
    return {f"c{i:03d}": (x[i::num_clients], y[i::num_clients]) for i in range(num_clients)}


def _seed() -> None:
    import numpy as np
    import tensorflow as tf

    np.random.seed(0)
    tf.random.set_seed(0)


def user_fedavg():
    """FedAvg as a user writes it on kerasfed's algorithm API (the built-in's pieces, by hand)."""
    import dataclasses

    import kerasfed

    @dataclasses.dataclass(frozen=True)
    class UserFedAvg(kerasfed.Algorithm):
        def client_end(self, ctx, weights):
            return kerasfed.ClientOutput(
                update=[w - w0 for w, w0 in zip(weights, ctx.broadcast_weights)])

        def server_update(self, ctx):
            state, weights = ctx.optimizer.step(ctx.optimizer_state, ctx.weights,
                                                [-u for u in ctx.update])
            return weights, state

    return UserFedAvg()


def run_kerasfed(engine: str, user_algorithm: bool = False):
    def run(model_name, clients, rounds):
        if engine == "tff":
            import tensorflow_federated  # noqa: F401  (imported before the clock, as for tff_direct)
        import kerasfed

        keras = _keras()
        ends = []

        class RoundEnd(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                ends.append(time.perf_counter())

        model = build_model(model_name)
        start = time.perf_counter()
        history = kerasfed.fit_federated(
            model, clients, rounds=rounds, local_epochs=1, batch_size=BATCH,
            server_learning_rate=SERVER_LR, engine=engine, seed=0, verbose=0,
            callbacks=[RoundEnd()], algorithm=user_fedavg() if user_algorithm else "fedavg",
        )
        extra = {"round_seconds": [float(s) for s in history.history.get("round_seconds", [])]}
        return start, ends, history.model, extra

    return run


def run_tff_direct(model_name, clients, rounds):
    """FedAvg as a TFF user writes it by hand, on TFF's default execution context."""
    import tensorflow as tf
    import tensorflow_federated as tff

    keras = _keras()
    start = time.perf_counter()  # after the TFF import, as for kerasfed
    datasets = [tf.data.Dataset.from_tensor_slices(xy).batch(BATCH) for xy in clients.values()]
    spec = datasets[0].element_spec

    def model_fn():
        keras_model = keras.models.clone_model(build_model(model_name))  # from_keras_model refuses compiled models
        return tff.learning.models.from_keras_model(
            keras_model, loss=keras.losses.SparseCategoricalCrossentropy(),
            input_spec=spec, metrics=[keras.metrics.SparseCategoricalAccuracy()],
        )

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(CLIENT_LR),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(SERVER_LR),
    )
    state = process.initialize()
    ends = []
    for _ in range(rounds):
        state = process.next(state, datasets).state
        ends.append(time.perf_counter())
    final = build_model(model_name)
    process.get_model_weights(state).assign_weights_to(final)
    return start, ends, final, {}


def run_fused_loop(model_name, clients, rounds):
    """The floor: local SGD in one tf.function per client (plain tensors, no tf.data),
    clients one after another, weighted mean of the deltas applied with server lr 1."""
    import tensorflow as tf

    keras = _keras()
    start = time.perf_counter()
    model = build_model(model_name)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    weights = [tf.Variable(v) for v in model.trainable_variables]
    data = [(tf.constant(x), tf.constant(y)) for x, y in clients.values()]
    sizes = [float(len(y)) for _, y in clients.values()]
    total = sum(sizes)

    @tf.function
    def client_delta(x, y):
        for var, glob in zip(model.trainable_variables, weights):
            var.assign(glob)
        steps = (tf.shape(y)[0] + BATCH - 1) // BATCH
        for i in tf.range(steps):
            xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            for var, grad in zip(model.trainable_variables, grads):
                var.assign_sub(CLIENT_LR * grad)
        return [var - glob for var, glob in zip(model.trainable_variables, weights)]

    ends = []
    for _ in range(rounds):
        mean_delta = None
        for (x, y), size in zip(data, sizes):
            delta = [d * (size / total) for d in client_delta(x, y)]
            mean_delta = delta if mean_delta is None else [a + b for a, b in zip(mean_delta, delta)]
        for glob, d in zip(weights, mean_delta):
            glob.assign_add(SERVER_LR * d)
        ends.append(time.perf_counter())
    for var, glob in zip(model.trainable_variables, weights):
        var.assign(glob)
    return start, ends, model, {}


def run_pfl(model_name, clients, rounds):
    """Apple pfl-research FedAvg on its TF backend, variables keyed by path (see the docstring)."""
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import MinimizeReuseUserSampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.tensorflow import TFModel

    keras = _keras()

    class PathKeyedTFModel(TFModel):
        # pfl 0.6.0 keys by `variable.name`; in Keras 3 that is `kernel`/`bias` for
        # every layer, so all layers but the last would fall out of the average.
        def __init__(self, model, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            self._variable_map = {v.path: v for v in model.trainable_variables}
            if len(self._variable_map) != len(model.trainable_variables):
                raise RuntimeError("variable paths are not unique")

    class FedAvgNoFirstRoundEval(FederatedAveraging):
        # pfl evaluates every training user before and after local training in
        # iteration 0 (0 % evaluation_frequency == 0); the other contestants don't.
        def get_next_central_contexts(self, *args, **kwargs):
            contexts, model, metrics = super().get_next_central_contexts(*args, **kwargs)
            if contexts is not None:
                contexts = tuple(dataclasses.replace(c, do_evaluation=False) for c in contexts)
            return contexts, model, metrics

    ends = []

    class RoundEnd(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            ends.append(time.perf_counter())
            return False, Metrics()

    start = time.perf_counter()
    keras_model = build_model(model_name)
    user_ids = list(clients)
    federated = FederatedDataset(
        lambda uid: Dataset(clients[uid], user_id=uid), MinimizeReuseUserSampler(user_ids)
    )
    backend = SimulatedBackend(training_data=federated, val_data=None)
    model = PathKeyedTFModel(
        keras_model, metrics={}, central_optimizer=keras.optimizers.SGD(SERVER_LR)
    )
    FedAvgNoFirstRoundEval().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds, evaluation_frequency=rounds + 1,
            train_cohort_size=len(user_ids), val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_num_epochs=1, local_learning_rate=CLIENT_LR, local_batch_size=BATCH
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=500),
        callbacks=[RoundEnd()],
        send_metrics_to_platform=False,
    )
    return start, ends, keras_model, {"pfl_variables": len(model.variable_map)}


def run_flwr(model_name, clients, rounds):
    """Flower's simulation engine (Ray) with its Message API, as its docs write FedAvg:
    a ClientApp that calls model.fit, the FedAvg strategy on the ServerApp."""
    import numpy as np
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    num = len(clients)
    tmp = tempfile.mkdtemp(prefix="flwr-bench-")
    data_file = os.path.join(tmp, "clients.npz")
    arrays = {}
    for i, (x, y) in enumerate(clients.values()):
        arrays[f"x{i}"], arrays[f"y{i}"] = x, y
    np.savez(data_file, **arrays)

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context):
        # One model and the data per Ray actor, kept across calls; `sys` is imported
        # by reference in the actor, whereas this function is pickled by value.
        cache = sys.__dict__.setdefault("_federated_round_flwr", {})
        if "model" not in cache:
            cache["model"] = build_model(model_name)
            cache["data"] = dict(np.load(data_file))
        model, data = cache["model"], cache["data"]
        pid = int(context.node_config["partition-id"])
        x, y = data[f"x{pid}"], data[f"y{pid}"]
        model.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        content = RecordDict({
            "arrays": ArrayRecord(model.get_weights()),
            "metrics": MetricRecord({"train_loss": float(history.history["loss"][-1]),
                                     "num-examples": len(y)}),
        })
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()
    final = {}
    ends = []
    initial = build_model(model_name).get_weights()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        def round_end(server_round, arrays):
            if server_round >= 1:  # called before round 1 too
                ends.append(time.perf_counter())
            return None

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num,
                          min_evaluate_nodes=0, min_available_nodes=num)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                                num_rounds=rounds, evaluate_fn=round_end)
        final["weights"] = result.arrays.to_numpy_ndarrays()

    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if "weights" not in final:
        raise RuntimeError("the Flower simulation ended without a result")
    model = build_model(model_name)
    model.set_weights(final["weights"])
    return start, ends, model, {}


def run_matmul_peak() -> dict:
    """float32 GFLOP/s of a chain of 2048x2048 tf.matmul in one tf.function; best of 4."""
    import tensorflow as tf

    n, reps = MATMUL_N, 10
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n)) / (n ** 0.5)

    @tf.function
    def chain(c):
        for _ in tf.range(reps):
            c = tf.matmul(c, b)
        return c

    chain(a).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(4):
        t0 = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - t0)
    return {"gflops": 2 * n ** 3 * reps / best / 1e9, "n": n, "reps": reps, "seconds": best,
            "tensorflow": tf.__version__}


RUNNERS = {
    "native_k3": run_kerasfed("native"),
    "native_k2": run_kerasfed("native"),
    "kerasfed_tff": run_kerasfed("tff"),
    "tff_direct": run_tff_direct,
    "fused_loop": run_fused_loop,
    "pfl": run_pfl,
    "flwr": run_flwr,
    "native_k3_100": run_kerasfed("native"),
    "native_k3_1t": run_kerasfed("native"),
    "user_k3": run_kerasfed("native", user_algorithm=True),
    "user_k2": run_kerasfed("native", user_algorithm=True),
}


def child(args) -> None:
    if args.child == "matmul_peak":
        result = run_matmul_peak()
    else:
        import tensorflow as tf

        num_clients = CONTESTANTS[args.child].clients
        clients = client_arrays(args.data_dir, num_clients)
        _seed()
        macs = forward_macs(build_model(args.model))
        _seed()
        start, ends, model, extra = RUNNERS[args.child](args.model, clients, args.rounds)
        if len(ends) != args.rounds:
            raise RuntimeError(f"{len(ends)} round ends recorded for {args.rounds} rounds")
        xs = [x for x, _ in clients.values()]
        ys = [y for _, y in clients.values()]
        import numpy as np

        x, y = np.concatenate(xs)[:EVAL_EXAMPLES], np.concatenate(ys)[:EVAL_EXAMPLES]
        # A fresh model with the final weights: the same evaluation for everyone.
        final = build_model(args.model)
        final.set_weights(model.get_weights())
        loss, acc = final.evaluate(x, y, batch_size=500, verbose=0)
        result = {
            "first_round_s": ends[0] - start,
            "round_s": [b - a for a, b in zip(ends, ends[1:])],
            "forward_macs_per_example": macs,
            "examples_per_round": num_clients * CLIENT_SIZE,
            "final_loss": float(loss),
            "final_accuracy": float(acc),
            "tensorflow": tf.__version__,
            **extra,
        }
    with open(args.result, "w") as f:
        json.dump(result, f)


# -------------------------------------------------------------------------- parent side


def env_python(env: str) -> Path:
    return ROOT / ENVS[env].folder / "bin" / "python"


def run_child(name: str, model_name: str, args, log_dir: Path) -> dict:
    """Runs one contestant in its own session; returns its result or {"error": ...}."""
    env = CONTESTANTS[name].env if name in CONTESTANTS else "keras3"
    python = env_python(env)
    if not python.exists():
        return {"skipped": f"environment {ENVS[env].folder} missing "
                           f"(`python3 dev.py env {ENVS[env].dev_name}`, or pass --setup)"}
    log = log_dir / f"{name}_{model_name}.log"
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [str(python), __file__, "--child", name, "--model", model_name,
               "--rounds", str(args.rounds), "--result", result]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        # Own session: TFF's default context leaves its worker process running after
        # Python exits, holding our stdout (../shared/NOTES.md), and Ray starts its own
        # daemons; killing the group afterwards ends them. The result comes back
        # through a file, the output goes to the log.
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=ROOT,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                         **dict(CONTESTANTS[name].environment if name in CONTESTANTS else ())),
            )
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                code = f"timeout after {args.timeout} s"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if code != 0 or not os.path.exists(result):
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            return {"error": f"exit {code}", "log": str(log.relative_to(ROOT)),
                    "last_line": lines[-1][:300] if lines else ""}
        with open(result) as f:
            return json.load(f)


def setup_envs(envs: set[str]) -> None:
    # dev.py wants the base 3.11 interpreter, not this virtualenv's.
    python = getattr(sys, "_base_executable", sys.executable)
    names = sorted(ENVS[e].dev_name for e in envs)
    code = subprocess.call([python, str(ROOT / "dev.py"), "env", *names], cwd=ROOT)
    if code != 0:
        sys.exit(f"federated_round: `dev.py env {' '.join(names)}` failed (exit {code})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST IDX files (default: synthetic)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per contestant (default 8, at least 2)")
    parser.add_argument("--models", default="2nn,cnn", help="comma-separated: 2nn, cnn (default both)")
    parser.add_argument("--contestants", default=",".join(CONTESTANTS),
                        help=f"comma-separated subset of {','.join(CONTESTANTS)} (default all)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 rounds, 2nn only")
    parser.add_argument("--setup", action="store_true", help="create missing environments via dev.py first")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per contestant (default 1800)")
    parser.add_argument("--child", choices=[*CONTESTANTS, "matmul_peak"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.rounds, args.models = 2, "2nn"
    models = [m for m in args.models.split(",") if m]
    names = [c for c in args.contestants.split(",") if c]
    for bad in [m for m in models if m not in ("2nn", "cnn")] + [c for c in names if c not in CONTESTANTS]:
        parser.error(f"unknown model or contestant {bad!r}; models: 2nn, cnn; contestants: {', '.join(CONTESTANTS)}")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 1 traces and is not timed)")
    if args.data_dir and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir}: no such folder")
    if args.setup:
        setup_envs({CONTESTANTS[n].env for n in names} | {"keras3"})

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = OUT / "federated_round_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    report = {"settings": {"clients": NUM_CLIENTS, "client_size": CLIENT_SIZE, "batch": BATCH,
                           "client_lr": CLIENT_LR, "server_lr": SERVER_LR, "local_epochs": 1,
                           "rounds": args.rounds, "data": args.data_dir or "synthetic",
                           "cpus": os.cpu_count()},
              "results": {}}
    peak = run_child("matmul_peak", "none", args, log_dir)
    report["matmul_peak"] = {"before": peak}
    if peak.get("gflops"):
        print(f"float32 matmul peak ({MATMUL_N}x{MATMUL_N} tf.matmul chain, TF {peak['tensorflow']}), "
              f"before the contestants: {peak['gflops']:.1f} GFLOP/s", flush=True)
    else:
        print(f"float32 matmul peak: not measured ({peak.get('skipped') or peak.get('error')})", flush=True)
    print(f"FedAvg, {NUM_CLIENTS} clients x {CLIENT_SIZE} examples (scaling row: {SCALED_CLIENTS}), E=1, "
          f"B={BATCH}, client SGD lr {CLIENT_LR}, server SGD lr {SERVER_LR}, {args.rounds} rounds; "
          f"median s/round after round 1; data: {args.data_dir or 'synthetic (learnable labels)'}")
    if "pfl" in names:
        print("pfl-research: variables keyed by variable.path (pfl 0.6.0 keys by variable.name, which "
              "collapses Keras 3 layers); first-round evaluation of every user turned off.")
    header = (f"{'model':5} {'contestant':14} {'s/round':>8} {'vs TFF':>7} {'GFLOP/s':>8} {'%peak':>6} "
              f"{'->r1 s':>7} {'loss':>6} {'acc':>6}  what")
    runs = {}
    for model_name in models:
        results = runs[model_name] = {}
        for name in names:
            t0 = time.perf_counter()
            r = run_child(name, model_name, args, log_dir)
            status = "skipped" if "skipped" in r else "FAILED" if "error" in r else "done"
            print(f"  {model_name} {name}: {status} ({time.perf_counter() - t0:.0f} s)", flush=True)
            results[name] = r
            if "round_s" in r:
                r["median_round_s"] = statistics.median(r["round_s"])
                r["gflop_per_round"] = 6 * r["forward_macs_per_example"] * r["examples_per_round"] / 1e9
                r["gflops"] = r["gflop_per_round"] / r["median_round_s"]
    # Measured again after the contestants: on a shared machine other work can hold
    # a measurement down; the higher of the two is the ceiling.
    after = run_child("matmul_peak", "none", args, log_dir) if peak.get("gflops") else {}
    report["matmul_peak"]["after"] = after
    peak_gflops = max(peak.get("gflops", 0), after.get("gflops", 0)) or None
    report["matmul_peak"]["gflops"] = peak_gflops
    if peak_gflops:
        print(f"float32 matmul peak after the contestants: {after.get('gflops', 0):.1f} GFLOP/s; "
              f"%peak below is against {peak_gflops:.1f}", flush=True)
    for model_name, results in runs.items():
        print(f"\n{header}", flush=True)
        for name, r in results.items():
            _print_row(model_name, name, r, results.get("tff_direct"), peak_gflops)
        report["results"][model_name] = results
        some = next((r for r in results.values() if "gflop_per_round" in r and r["examples_per_round"]
                     == NUM_CLIENTS * CLIENT_SIZE), None)
        if some:
            print(f"  work per round ({NUM_CLIENTS} x {CLIENT_SIZE} examples): {some['gflop_per_round']:.2f} GFLOP "
                  f"(6 x {some['forward_macs_per_example']:,} forward multiply-adds per example)")
        for user, built_in in (("user_k3", "native_k3"), ("user_k2", "native_k2")):
            mine, theirs = results.get(user, {}), results.get(built_in, {})
            if "median_round_s" in mine and "median_round_s" in theirs:
                ratio = mine["median_round_s"] / theirs["median_round_s"]
                report.setdefault("user_algorithm_vs_built_in", {})[f"{model_name}/{user}"] = ratio
                print(f"  user-written FedAvg ({user}) vs built-in ({built_in}): {ratio:.2f}x the "
                      f"round time (goal <= 1.1x: {'met' if ratio <= 1.1 else 'NOT met'})",
                      flush=True)
        base, scaled = results.get("native_k3", {}), results.get("native_k3_100", {})
        if "median_round_s" in base and "median_round_s" in scaled:
            ratio = scaled["median_round_s"] / base["median_round_s"]
            report.setdefault("scaling_100_vs_20", {})[model_name] = ratio
            print(f"  scaling: native (Keras 3) 100 clients/round vs 20: {ratio:.2f}x the time for 5x the "
                  f"work (goal <= 5x: {'met' if ratio <= 5 else 'NOT met'})", flush=True)
    OUT.mkdir(exist_ok=True)
    path = OUT / f"federated_round_{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {path.relative_to(ROOT)}; logs: {log_dir.relative_to(ROOT)}/")


def _print_row(model_name: str, name: str, r: dict, tff: dict | None, peak: float | None) -> None:
    label = CONTESTANTS[name].label
    if "skipped" in r:
        print(f"{model_name:5} {name:14} skipped: {r['skipped']}", flush=True)
        return
    if "error" in r:
        print(f"{model_name:5} {name:14} FAILED ({r['error']}; {r['log']}): {r['last_line']}", flush=True)
        return
    vs = (f"{r['median_round_s'] / tff['median_round_s']:7.2f}"
          if tff and "median_round_s" in tff else f"{'-':>7}")
    pct = f"{100 * r['gflops'] / peak:6.1f}" if peak else f"{'-':>6}"
    print(f"{model_name:5} {name:14} {r['median_round_s']:8.3f} {vs} {r['gflops']:8.1f} {pct} "
          f"{r['first_round_s']:7.1f} {r['final_loss']:6.3f} {r['final_accuracy']:6.3f}  {label}", flush=True)


if __name__ == "__main__":
    main()
