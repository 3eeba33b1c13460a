"""Plots of a training's ``History``: one panel per metric, one point per round.

``plot_history`` draws what ``fit_federated`` records per round: the clients'
training values, ``validation_data``'s (``val_``), the pooled federated
evaluation (``fed_eval_``) with the spread of the per-client values (the band
between the ``_p10`` and ``_p90`` keys), and personalized against baseline
(``fed_eval_personalized_`` / ``fed_eval_baseline_``) where present. A model that
is good on average can be bad for a tenth of its clients: the band shows it.

matplotlib is an optional dependency (``pip install "kerasfed[plots]"``),
imported when ``plot_history`` is called; this module imports neither it nor
TensorFlow, so a ``History.history`` dict saved as JSON can be plotted anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kerasfed.errors import ArgumentError, ArgumentTypeError, MissingDependencyError

@dataclasses.dataclass(frozen=True)
class _Series:
    """One kind of line for a metric ``m``: the key ``prefix + m`` and, where the keys
    exist, the band between ``prefix + m + "_p10"`` and ``prefix + m + "_p90"``."""

    prefix: str
    label: str
    band_label: str
    color: str
    marker: str | None


_TRAINING = _Series("", "training (clients, local)", "training: p10-p90 of clients", "tab:blue", None)
_VALIDATION = _Series("val_", "validation_data", "validation: p10-p90", "tab:orange", "o")
_FED_EVAL = _Series("fed_eval_", "federated eval (pooled)", "federated eval: p10-p90 of clients",
                    "tab:green", "s")
_PERSONALIZED = _Series("fed_eval_personalized_", "personalized (client mean)",
                        "personalized: p10-p90 of clients", "tab:purple", "^")
_BASELINE = _Series("fed_eval_baseline_", "global model (client mean)",
                    "global model: p10-p90 of clients", "tab:gray", "v")
# A metric gets a panel of the global model's curves and, where personalization
# was evaluated, a second one of personalized against global on the same test
# parts: three bands in one panel hide each other.
_GLOBAL_PANEL = (_TRAINING, _VALIDATION, _FED_EVAL)
_PERSONAL_PANEL = (_PERSONALIZED, _BASELINE)
# Longer prefixes first: "fed_eval_baseline_loss" is the baseline's loss, not a
# pooled metric named "baseline_loss".
_EVAL_PREFIXES = tuple(sorted((s.prefix for s in _GLOBAL_PANEL + _PERSONAL_PANEL if s.prefix),
                              key=len, reverse=True))
_QUANTILE_SUFFIXES = ("_min", "_p10", "_p50", "_p90", "_max")
_BAND = ("_p10", "_p90")

# Per-round numbers fit_federated records that are not model metrics: no panel by
# default (``metrics=`` can still ask for one).
_BOOKKEEPING = frozenset({
    "num_examples", "round_seconds", "bytes_to_clients", "bytes_from_clients", "clip_norm",
    "clipped_fraction", "zeroed_fraction", "noise_std", "epsilon", "dp_delta", "attackers",
    "clients", "lr", "learning_rate",
})

_INSTALL_HINT = 'pip install "kerasfed[plots]" (or pip install matplotlib)'


def plot_history(
    history: Any,
    metrics: str | Sequence[str] | None = None,
    *,
    axes: Any = None,
    figsize: tuple[float, float] | None = None,
    evaluate_every: int | None = None,
) -> Any:
    """Draws the loss and each metric per round, with the clients' spread.

    One panel per metric ``m`` (``loss`` first), rounds on the x axis (1 is the
    first round), with, where the keys exist: the clients' training value ``m``
    (every round); ``val_m`` and the pooled ``fed_eval_m`` (evaluated rounds
    only) with the band from ``fed_eval_m_p10`` to ``fed_eval_m_p90`` (the spread
    of the evaluation clients' own values). Where personalization was evaluated,
    a second panel per metric: ``fed_eval_personalized_m`` against
    ``fed_eval_baseline_m`` (the global model on the same test parts), each with
    its p10-p90 band. Evaluated-round values are placed at the rounds that were
    evaluated: every ``evaluate_every`` rounds and the last, as ``fit_federated``
    records in ``history.params``.

    Nothing is shown: the figure is returned (a notebook displays it; a script
    calls ``fig.savefig(...)`` or ``plt.show()``).

    Example:
      >>> history = kerasfed.fit_federated(model, clients, rounds=30,
      ...                                  evaluation_clients=held_out)
      >>> fig = kerasfed.plot_history(history)        # doctest: +SKIP
      >>> fig.savefig("rounds.png")                   # doctest: +SKIP

    Args:
      history: The ``keras.callbacks.History`` ``fit_federated`` or
        ``fit_distributed`` returns, or its ``.history`` dict (e.g. loaded from
        JSON): ``{key: [one value per round or per evaluated round]}``.
      metrics: The metrics to draw, in this order (e.g. ``["accuracy"]`` or
        ``"loss"``), by their training names (``"accuracy"``, not
        ``"val_accuracy"``): the ``val_``/``fed_eval_`` forms join their panel.
        Default None: ``loss`` and every model metric in ``history``.
      axes: matplotlib ``Axes`` to draw into, one per panel in the order above
        (a single ``Axes`` for one panel); their figure is returned and each gets
        its own legend. Default None: a new figure, with one legend below the
        panels.
      figsize: ``(width, height)`` in inches of the new figure (default None:
        about 4.8 x 3.4 per panel, up to 3 panels a row).
      evaluate_every: How often the run evaluated (``fit_federated``'s argument),
        to place the shorter ``val_``/``fed_eval_`` lists on their rounds when
        ``history`` does not record it (a plain dict). Default None: read from
        ``history.params``; not needed when every round was evaluated.

    Returns:
      The ``matplotlib.figure.Figure`` holding the panels.

    Raises:
      MissingDependencyError: matplotlib is not installed.
      ArgumentTypeError: ``history`` is neither a History nor a dict of lists, or
        ``metrics``/``axes``/``evaluate_every`` has the wrong type.
      ArgumentError: ``history`` has no key this draws, ``metrics`` names one it
        does not have, the number of ``axes`` differs from the number of panels,
        or a list's length fits neither every round nor the evaluated rounds.
    """
    values, epochs, params = _read_history(history)
    names = _select_metrics(values, metrics)
    rounds = _Rounds.of(values, epochs, params, evaluate_every)
    panels = _plan_panels(names, values)
    for panel in panels:  # every list fits its rounds before anything is drawn
        _series_rounds(panel, values, rounds)
    plt = _import_pyplot()
    figure, all_axes = _axes_for(plt, axes, panels, figsize)
    # fit_distributed's History (Keras epochs) has params["epochs"] and no "rounds".
    by_epoch = "epochs" in params and "rounds" not in params and not _has_federated_keys(values)
    x_label = "epoch" if by_epoch else "round"
    legend: dict[str, Any] = {}  # label -> handle, in drawing order
    for ax, panel in zip(all_axes, panels):
        entries = _draw_panel(ax, panel, values, rounds, x_label)
        if axes is None:
            for label, handle in entries:
                legend.setdefault(label, handle)
        elif entries:
            ax.legend([h for _, h in entries], [label for label, _ in entries], fontsize="small")
    if legend:
        # One legend for all panels (a kind of line has the same colour in every
        # panel), below them, where it covers no data.
        figure.legend(list(legend.values()), list(legend), loc="outside lower center",
                      ncols=min(len(legend), len(figure.axes) + 1, 3), fontsize="small",
                      frameon=False)
    return figure


# -- Reading the history -------------------------------------------------------------------


def _read_history(history: Any) -> tuple[dict[str, list[float]], list[int] | None, dict]:
    """``(values, epoch indices or None, params)`` of a History or a plain dict."""
    if isinstance(history, Mapping):
        values, epochs, params = history, None, {}
    elif isinstance(getattr(history, "history", None), Mapping):  # keras.callbacks.History
        values = history.history
        epochs = list(getattr(history, "epoch", None) or []) or None
        params = dict(getattr(history, "params", None) or {})
    else:
        raise ArgumentTypeError(
            f"plot_history expected a keras History (what fit_federated and fit_distributed "
            f"return) or its `.history` dict {{key: [values]}}. Received: {type(history).__name__} "
            f"{_short_repr(history)}. Pass the History itself: plot_history(history)."
        )
    table: dict[str, list[float]] = {}
    for key, series in values.items():
        try:
            if not isinstance(key, str) or isinstance(series, (str, bytes)):
                raise TypeError
            # None (a value JSON could not hold) is a gap in the line, like NaN.
            table[key] = [float("nan") if v is None else float(v) for v in series]
        except (TypeError, ValueError):
            raise ArgumentTypeError(
                f"plot_history expected `history` to map metric names to lists of numbers. "
                f"Received: {key!r}: {_short_repr(series)}. Pass History.history (or the History)."
            ) from None
    return table, epochs, params


def _metric_of(key: str) -> str:
    """The metric a key draws: ``fed_eval_accuracy_p90`` -> ``accuracy``."""
    for prefix in _EVAL_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key


def _is_quantile(key: str, values: Mapping[str, Any]) -> bool:
    # Only a key whose pooled line also exists is a quantile: a metric may itself
    # end in "_max".
    return any(key.endswith(s) and key[: -len(s)] in values for s in _QUANTILE_SUFFIXES)


def _available_metrics(values: Mapping[str, Any]) -> list[str]:
    """Every metric that has a line, ``loss`` first, then in the History's order."""
    found: dict[str, None] = {}
    for key in values:
        if not _is_quantile(key, values):
            found.setdefault(_metric_of(key))
    names = [m for m in found if m not in _BOOKKEEPING]
    return sorted(names, key=lambda m: m != "loss")  # stable: the rest keep their order


def _select_metrics(values: Mapping[str, Any], metrics: str | Sequence[str] | None) -> list[str]:
    available = _available_metrics(values)
    if metrics is None:
        if not available:
            raise ArgumentError(
                f"plot_history found nothing to draw: expected `loss`, a compiled metric "
                f"(`accuracy`), `val_<metric>` or `fed_eval_<metric>` keys, as fit_federated "
                f"records them. Received keys: {sorted(values) or 'none (an empty history)'}. "
                f"Pass the History of a finished run."
            )
        return available
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Sequence) or not all(isinstance(m, str) for m in metrics):
        raise ArgumentTypeError(
            f"plot_history expected `metrics` to be a metric name or a list of them "
            f"(e.g. ['accuracy']). Received: {_short_repr(metrics)}."
        )
    drawable = {_metric_of(k) for k in values if not _is_quantile(k, values)}
    unknown = [m for m in metrics if m not in drawable]
    if not metrics or unknown:
        raise ArgumentError(
            f"plot_history expected `metrics` to name metrics of this history: "
            f"{sorted(drawable)}. Received: metrics={list(metrics)!r}"
            f"{f' (unknown: {unknown})' if unknown else ''}. Use the training names "
            f"(`accuracy`, not `val_accuracy`), or metrics=None for all."
        )
    return list(metrics)


def _has_federated_keys(values: Mapping[str, Any]) -> bool:
    return any(k.startswith("fed_eval_") for k in values)


@dataclasses.dataclass(frozen=True)
class _Rounds:
    """Which round (1-based) each value of a list belongs to."""

    every: list[int]  # all rounds run
    evaluated: list[int] | None  # the evaluated ones, None where unknown
    source: str  # how `evaluated` was found, for messages

    @classmethod
    def of(cls, values: Mapping[str, list[float]], epochs: list[int] | None, params: Mapping,
           evaluate_every: int | None) -> _Rounds:
        count = max((len(v) for v in values.values()), default=0)
        # History.epoch holds 0-based round indices (a resumed run's too).
        every = [e + 1 for e in epochs] if epochs and len(epochs) == count else list(range(1, count + 1))
        if evaluate_every is not None:
            if isinstance(evaluate_every, bool) or not isinstance(evaluate_every, int):
                raise ArgumentTypeError(
                    f"plot_history expected `evaluate_every` to be an int (fit_federated's "
                    f"argument). Received: {_short_repr(evaluate_every)}."
                )
            if evaluate_every < 1:
                raise ArgumentError(
                    f"plot_history expected `evaluate_every` >= 1. Received: {evaluate_every}."
                )
            source = f"evaluate_every={evaluate_every}"
        else:
            evaluate_every = params.get("evaluate_every")
            source = f"history.params['evaluate_every']={evaluate_every}"
        if evaluate_every is None:
            return cls(every, None, "")
        # fit_federated evaluates every `evaluate_every` rounds and on its last round
        # (params["rounds"]; a run stopped early by a callback does not reach it).
        last = params.get("rounds", every[-1] if every else 0)
        evaluated = [r for r in every if r % evaluate_every == 0 or r == last]
        return cls(every, evaluated, source)

    def of_key(self, key: str, length: int) -> list[int]:
        if length == len(self.every):
            return self.every
        if self.evaluated is not None and length == len(self.evaluated):
            return self.evaluated
        if self.evaluated is None:
            fix = ("Pass evaluate_every= as given to fit_federated (a History from "
                   "fit_federated records it in history.params)")
        else:
            fix = (f"with {self.source} the evaluated rounds are {self.evaluated}; pass the "
                   f"evaluate_every the run used")
        raise ArgumentError(
            f"plot_history cannot tell which rounds history[{key!r}] belongs to: expected "
            f"{len(self.every)} values (one per round) or one per evaluated round. Received: "
            f"{length} values. {fix}."
        )


# -- Drawing -------------------------------------------------------------------------------


def _import_pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt  # noqa: PLC0415  (optional: imported on use)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "matplotlib":
            raise  # something matplotlib itself needs is missing: its own error
        error = MissingDependencyError(
            f"kerasfed.plot_history needs matplotlib, which is not installed in this Python "
            f"environment (`import {e.name}` failed). Install it: {_INSTALL_HINT}."
        )
        error.name = e.name
        raise error from e
    return plt


@dataclasses.dataclass(frozen=True)
class _Panel:
    metric: str
    title: str
    series: tuple[_Series, ...]


def _plan_panels(names: Sequence[str], values: Mapping[str, Any]) -> list[_Panel]:
    """The global model's panels first (one row), then personalized vs global ones."""
    def present(group: tuple[_Series, ...], name: str) -> bool:
        return any(s.prefix + name in values for s in group)

    return [
        *(_Panel(m, m, _GLOBAL_PANEL) for m in names if present(_GLOBAL_PANEL, m)),
        *(_Panel(m, f"{m}: personalized vs global", _PERSONAL_PANEL)
          for m in names if present(_PERSONAL_PANEL, m)),
    ]


def _axes_for(plt: Any, axes: Any, panels: list[_Panel],
              figsize: tuple[float, float] | None) -> tuple[Any, list]:
    if axes is None:
        return _new_figure(plt, panels, figsize)
    from matplotlib.axes import Axes  # noqa: PLC0415

    given = [axes] if isinstance(axes, Axes) else list(axes) if isinstance(axes, Sequence) else None
    if given is None or not all(isinstance(a, Axes) for a in given):
        raise ArgumentTypeError(
            f"plot_history expected `axes` to be a matplotlib Axes or a list of them (one per "
            f"panel). Received: {_short_repr(axes)}."
        )
    if len(given) != len(panels):
        raise ArgumentError(
            f"plot_history expected one Axes per panel: {len(panels)} "
            f"({', '.join(repr(p.title) for p in panels)}). Received: {len(given)} axes. "
            f"Pass as many axes, or metrics= with fewer names."
        )
    return given[0].figure, given


def _new_figure(plt: Any, panels: list[_Panel], figsize: tuple[float, float] | None) -> tuple[Any, list]:
    # Global panels fill the first row(s); personalized ones start on a new row
    # so that each metric's two panels stand one above the other.
    personal = sum(p.series is _PERSONAL_PANEL for p in panels)
    glob = len(panels) - personal
    cols = min(max(glob, personal), 3)
    glob_rows, personal_rows = -(-glob // cols), -(-personal // cols)
    rows = glob_rows + personal_rows
    size = figsize or (4.8 * cols, 3.4 * rows + 0.3 + 0.25 * _legend_rows(panels))
    figure, grid = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    cells = list(grid.flat)
    used = cells[:glob] + cells[glob_rows * cols: glob_rows * cols + personal]
    for cell in cells:
        if not any(cell is u for u in used):
            cell.remove()
    return figure, used


def _legend_rows(panels: list[_Panel]) -> int:
    kinds = {s.prefix for p in panels for s in p.series}
    return -(-2 * len(kinds) // 3)  # a line and a band per kind, 3 a row


def _draw_panel(ax: Any, panel: _Panel, values: Mapping[str, list[float]], rounds: _Rounds,
                x_label: str) -> list[tuple[str, Any]]:
    """Draws one panel; returns its ``(label, handle)`` legend entries in order."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    entries = []
    for series, x in _series_rounds(panel, values, rounds):
        key = series.prefix + panel.metric
        (line,) = ax.plot(x, values[key], color=series.color, label=series.label,
                          marker=series.marker if len(x) <= 40 else None, markersize=4,
                          linewidth=1.6 if series.prefix else 1.2)
        entries.append((series.label, line))
        low, high = (values.get(key + s) for s in _BAND)
        if low is not None and high is not None:
            if len(x) == 1:  # a band one round wide, where a zero-wide one would not show
                x, low, high = [x[0] - 0.25, x[0] + 0.25], low * 2, high * 2
            band = ax.fill_between(x, low, high, color=series.color, alpha=0.18, linewidth=0,
                                   label=series.band_label)
            entries.append((series.band_label, band))
    xs = [r for _, x in _series_rounds(panel, values, rounds) for r in x]
    if xs:  # half a round of margin: no tick at round 0
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_title(panel.title)
    ax.set_xlabel(x_label)
    # Rounds are whole numbers: ticks on 1, 2, 5 or 10 multiples, never 2.5.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    return entries


def _series_rounds(panel: _Panel, values: Mapping[str, list[float]],
                   rounds: _Rounds) -> list[tuple[_Series, list[int]]]:
    """The panel's series that ``values`` has, each with its rounds; checks the bands'."""
    found = []
    for series in panel.series:
        key = series.prefix + panel.metric
        if key not in values:
            continue
        x = rounds.of_key(key, len(values[key]))
        for suffix in _BAND:
            band = values.get(key + suffix)
            if band is not None and len(band) != len(x):
                raise ArgumentError(
                    f"plot_history expected history[{key + suffix!r}] to have one value per "
                    f"value of history[{key!r}] ({len(x)}). Received: {len(band)} values."
                )
        found.append((series, x))
    return found


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
