"""kerasfed.plot_history: panels, lines at the right rounds, bands, errors.

Drawing needs matplotlib (the `plots` extra), which only the TF 2.14 environment
has: those tests skip elsewhere. The argument checks run before matplotlib is
imported, so they are pure Python (``tf_independent``); the missing-matplotlib
error is checked in every environment (``install``).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import kerasfed
from kerasfed.errors import ArgumentError, ArgumentTypeError, MissingDependencyError

ROUNDS = 5
EVALUATED = [2, 4, 5]  # evaluate_every=2 of 5 rounds: every second round and the last


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as pyplot

    yield pyplot
    pyplot.close("all")


def _values(personalized: bool = False) -> dict[str, list[float]]:
    """A fit_federated-like History.history: 5 rounds, evaluated on rounds 2, 4, 5."""
    rng = np.random.default_rng(0)
    per_round = lambda: [round(float(v), 3) for v in rng.uniform(0, 1, ROUNDS)]  # noqa: E731
    per_eval = lambda: [round(float(v), 3) for v in rng.uniform(0, 1, len(EVALUATED))]  # noqa: E731
    values = {
        "loss": per_round(), "accuracy": per_round(), "num_examples": [120.0] * ROUNDS,
        "round_seconds": per_round(), "bytes_to_clients": [800.0] * ROUNDS,
        "val_loss": per_eval(), "val_accuracy": per_eval(),
    }
    kinds = ["fed_eval_", *(["fed_eval_personalized_", "fed_eval_baseline_"] if personalized else [])]
    for kind in kinds:
        for metric in ("loss", "accuracy"):
            values[kind + metric] = per_eval()
            for suffix in ("min", "p10", "p50", "p90", "max"):
                values[f"{kind}{metric}_{suffix}"] = per_eval()
    return values


def _history(values: dict, **params):
    from kerasfed._compat import keras

    history = keras.callbacks.History()
    history.history = values
    history.epoch = list(range(len(values["loss"])))
    history.params = {"epochs": ROUNDS, "rounds": ROUNDS, **params}
    return history


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def _band_points(ax, label: str) -> set[tuple[float, float]]:
    (band,) = [c for c in ax.collections if c.get_label() == label]
    return {tuple(v) for v in band.get_paths()[0].vertices.tolist()}


def _expected_band(x, low, high) -> set[tuple[float, float]]:
    return {(float(r), v) for r, v in zip(x, low)} | {(float(r), v) for r, v in zip(x, high)}


def test_one_panel_per_metric_with_lines_at_their_rounds(plt):
    values = _values()
    fig = kerasfed.plot_history(_history(values, evaluate_every=2))
    # No panel for bookkeeping (num_examples, round_seconds, bytes_to_clients).
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    for ax, metric in zip(fig.axes, ("loss", "accuracy")):
        lines = _lines(ax)
        assert lines["training (clients, local)"] == ([1, 2, 3, 4, 5], values[metric])
        assert lines["validation_data"] == (EVALUATED, values[f"val_{metric}"])
        assert lines["federated eval (pooled)"] == (EVALUATED, values[f"fed_eval_{metric}"])
        assert _band_points(ax, "federated eval: p10-p90 of clients") == _expected_band(
            EVALUATED, values[f"fed_eval_{metric}_p10"], values[f"fed_eval_{metric}_p90"])
        assert ax.get_xlabel() == "round"
        assert all(float(t).is_integer() for t in ax.get_xticks())  # whole rounds
    (legend,) = fig.legends  # one, below the panels
    assert [t.get_text() for t in legend.get_texts()] == [
        "training (clients, local)", "validation_data", "federated eval (pooled)",
        "federated eval: p10-p90 of clients"]


def test_personalized_vs_global_get_a_panel_per_metric(plt):
    values = _values(personalized=True)
    fig = kerasfed.plot_history(_history(values, evaluate_every=2), metrics=["accuracy"])
    assert [ax.get_title() for ax in fig.axes] == ["accuracy", "accuracy: personalized vs global"]
    ax = fig.axes[1]
    lines = _lines(ax)
    assert set(lines) == {"personalized (client mean)", "global model (client mean)"}
    assert lines["personalized (client mean)"] == (EVALUATED, values["fed_eval_personalized_accuracy"])
    assert lines["global model (client mean)"] == (EVALUATED, values["fed_eval_baseline_accuracy"])
    for kind, label in (("personalized", "personalized"), ("baseline", "global model")):
        assert _band_points(ax, f"{label}: p10-p90 of clients") == _expected_band(
            EVALUATED, values[f"fed_eval_{kind}_accuracy_p10"], values[f"fed_eval_{kind}_accuracy_p90"])
    # The personalized panel sits below the global one.
    assert fig.axes[1].get_position().y1 < fig.axes[0].get_position().y0


def test_a_plain_dict_needs_evaluate_every_for_shorter_lists(plt):
    values = _values()
    fig = kerasfed.plot_history(values, evaluate_every=2, metrics="loss")
    assert _lines(fig.axes[0])["validation_data"] == (EVALUATED, values["val_loss"])
    with pytest.raises(ArgumentError, match=r"cannot tell which rounds history\['val_loss'\] belongs "
                                            r"to: expected 5 values .* Received: 3 values\. Pass "
                                            r"evaluate_every="):
        kerasfed.plot_history(values, metrics="loss")
    # Evaluated on every round: nothing to tell.
    every_round = {"loss": [3.0, 2.0, 1.0], "val_loss": [3.5, 2.5, 1.5]}
    fig = kerasfed.plot_history(every_round)
    assert _lines(fig.axes[0])["validation_data"] == ([1, 2, 3], [3.5, 2.5, 1.5])


def test_a_resumed_run_starts_at_its_first_round_and_epochs_read_as_epochs(plt):
    values = {"loss": [0.5, 0.4], "accuracy": [0.8, 0.9]}
    history = _history(values)
    history.epoch = [3, 4]  # History.epoch holds 0-based round indices
    fig = kerasfed.plot_history(history, metrics="accuracy")
    assert _lines(fig.axes[0])["training (clients, local)"][0] == [4, 5]
    history.params = {"epochs": 2}  # fit_distributed's History: Keras epochs, no rounds
    assert kerasfed.plot_history(history).axes[0].get_xlabel() == "epoch"


def test_a_single_evaluated_round_gets_a_band_one_round_wide(plt):
    values = {"loss": [1.0, 0.8], "fed_eval_loss": [0.9], "fed_eval_loss_p10": [0.7],
              "fed_eval_loss_p90": [1.2]}
    ax = kerasfed.plot_history(values, evaluate_every=2).axes[0]
    assert _lines(ax)["federated eval (pooled)"] == ([2], [0.9])
    assert _band_points(ax, "federated eval: p10-p90 of clients") == _expected_band(
        [1.75, 2.25], [0.7, 0.7], [1.2, 1.2])
    assert ax.get_xlim() == (0.5, 2.5)  # half a round of margin: no round 0


def test_axes_and_figsize(plt):
    values = _values()
    fig, (left, right) = plt.subplots(1, 2)
    assert kerasfed.plot_history(_history(values, evaluate_every=2), axes=[left, right]) is fig
    assert [left.get_title(), right.get_title()] == ["loss", "accuracy"]
    assert left.get_legend() is not None and not fig.legends  # each given Axes has its own
    single = kerasfed.plot_history(values, metrics="accuracy", axes=right, evaluate_every=2)
    assert single is fig
    fig = kerasfed.plot_history(values, evaluate_every=2, figsize=(7.0, 3.0))
    assert tuple(fig.get_size_inches()) == (7.0, 3.0)


def test_axes_errors(plt):
    fig, (left, right) = plt.subplots(1, 2)
    with pytest.raises(ArgumentError, match=r"expected one Axes per panel: 2 \('loss', 'accuracy'\)\. "
                                            r"Received: 1 axes"):
        kerasfed.plot_history(_values(), evaluate_every=2, axes=[left])
    with pytest.raises(ArgumentTypeError, match=r"expected `axes` to be a matplotlib Axes or a list "
                                                r"of them .* Received: 'left'"):
        kerasfed.plot_history(_values(), evaluate_every=2, axes="left")


def test_from_a_real_fit_federated_run(plt, tmp_path):
    from kerasfed._compat import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 4)).astype("float32")
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype("int32")
    train = kerasfed.partition(x[:60], y[:60], num_clients=4, seed=0)
    held_out = {f"e{i}": (x[60 + 10 * i: 70 + 10 * i], y[60 + 10 * i: 70 + 10 * i]) for i in range(3)}
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = kerasfed.fit_federated(model, train, rounds=3, evaluate_every=2,
                                     evaluation_clients=held_out, validation_data=(x[60:], y[60:]),
                                     personalization=kerasfed.FineTune(epochs=1),
                                     engine="native", verbose=0, seed=0)
    assert history.params["evaluate_every"] == 2
    h = history.history
    fig = kerasfed.plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == [
        "loss", "accuracy", "loss: personalized vs global", "accuracy: personalized vs global"]
    loss_panel = fig.axes[0]
    lines = _lines(loss_panel)
    assert lines["training (clients, local)"] == ([1, 2, 3], h["loss"])
    assert lines["validation_data"] == ([2, 3], h["val_loss"])  # round 3: the last, always evaluated
    assert lines["federated eval (pooled)"] == ([2, 3], h["fed_eval_loss"])
    band = _band_points(loss_panel, "federated eval: p10-p90 of clients")
    assert band == _expected_band([2, 3], h["fed_eval_loss_p10"], h["fed_eval_loss_p90"])
    # The band at the last round is the spread of each held-out client's own loss
    # under the final global model, which plain Keras evaluate gives.
    losses = [model.evaluate(cx, cy, verbose=0)[0] for cx, cy in held_out.values()]
    last = sorted(v for r, v in band if r == 3.0)
    np.testing.assert_allclose(last, np.percentile(losses, [10, 90]), rtol=1e-5)
    personal = _lines(fig.axes[3])
    assert personal["personalized (client mean)"] == ([2, 3], h["fed_eval_personalized_accuracy"])
    assert personal["global model (client mean)"] == ([2, 3], h["fed_eval_baseline_accuracy"])
    fig.savefig(tmp_path / "rounds.png")  # lays out and renders
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- Argument checks: before matplotlib is imported -------------------------------------------


@pytest.mark.tf_independent
@pytest.mark.parametrize("history, match", [
    ([0.5, 0.4], r"expected a keras History .* Received: list \[0\.5, 0\.4\]"),
    (None, r"expected a keras History .* Received: NoneType None"),
    ({"loss": 0.5}, r"to map metric names to lists of numbers\. Received: 'loss': 0\.5"),
    ({"loss": ["a"]}, r"to map metric names to lists of numbers\. Received: 'loss': \['a'\]"),
])
def test_history_of_the_wrong_type(history, match):
    with pytest.raises(ArgumentTypeError, match=match):
        kerasfed.plot_history(history)


@pytest.mark.tf_independent
@pytest.mark.parametrize("history", [{}, {"num_examples": [10.0], "round_seconds": [0.1]}])
def test_history_without_anything_to_draw(history):
    with pytest.raises(ArgumentError, match=r"found nothing to draw: expected `loss`, a compiled "
                                            r"metric .* Received keys: "):
        kerasfed.plot_history(history)


@pytest.mark.tf_independent
def test_metrics_errors():
    values = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7], "val_accuracy": [0.6, 0.8]}
    with pytest.raises(ArgumentError, match=r"expected `metrics` to name metrics of this history: "
                                            r"\['accuracy', 'loss'\]\. Received: metrics=\['val_accuracy'\] "
                                            r"\(unknown: \['val_accuracy'\]\)\. Use the training names"):
        kerasfed.plot_history(values, metrics=["val_accuracy"])
    with pytest.raises(ArgumentError, match=r"Received: metrics=\[\]\. Use the training names"):
        kerasfed.plot_history(values, metrics=[])
    with pytest.raises(ArgumentTypeError, match=r"expected `metrics` to be a metric name or a list "
                                                r"of them .* Received: 3"):
        kerasfed.plot_history(values, metrics=3)


@pytest.mark.tf_independent
def test_evaluate_every_errors():
    values = {"loss": [1.0, 0.9, 0.8, 0.7, 0.6], "val_loss": [0.9, 0.7]}
    with pytest.raises(ArgumentTypeError, match=r"expected `evaluate_every` to be an int .* Received: '2'"):
        kerasfed.plot_history(values, evaluate_every="2")
    with pytest.raises(ArgumentError, match=r"expected `evaluate_every` >= 1\. Received: 0"):
        kerasfed.plot_history(values, evaluate_every=0)
    # Every 2nd of 5 rounds and the last are 3 rounds, not 2: the wrong evaluate_every.
    with pytest.raises(ArgumentError, match=r"Received: 2 values\. with evaluate_every=2 the evaluated "
                                            r"rounds are \[2, 4, 5\]; pass the evaluate_every the run used"):
        kerasfed.plot_history(values, evaluate_every=2)
    band = dict(values, val_loss=[0.9, 0.7, 0.6], fed_eval_loss=[0.9, 0.7, 0.6],
                fed_eval_loss_p10=[0.8], fed_eval_loss_p90=[1.0, 0.8, 0.7])
    with pytest.raises(ArgumentError, match=r"expected history\['fed_eval_loss_p10'\] to have one value "
                                            r"per value of history\['fed_eval_loss'\] \(3\)\. Received: 1"):
        kerasfed.plot_history(band, evaluate_every=2)


@pytest.mark.install
def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    # A None entry makes the import raise ModuleNotFoundError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError, match=r"kerasfed\.plot_history needs matplotlib, which "
                                                     r"is not installed .* pip install \"kerasfed\[plots\]\""):
        kerasfed.plot_history({"loss": [1.0, 0.5]})
