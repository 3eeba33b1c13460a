"""A compiled Keras model as a recipe that can be rebuilt anywhere.

Both halves of kerasfed need to rebuild the user's compiled model somewhere else:
``fit_distributed`` inside a ``tf.distribute`` strategy's scope (variables must be
created there), ``fit_federated`` inside the graph TFF traces. A recipe keeps what
``compile()`` and the architecture said plus the weights, so a rebuild has the same
architecture, weights, optimizer settings, loss and metrics, while sharing no
variable with the original (which stays usable by the caller).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Union

import numpy as np

from kerasfed._compat import keras
from kerasfed.errors import ModelError, ModelTypeError  # noqa: F401  (defined with the family)

ModelLike = Union["keras.Model", Callable[[], "keras.Model"]]


def resolve_compiled_model(model: ModelLike, *, caller: str) -> "keras.Model":
    """Returns the compiled, built Keras model that ``model`` is or builds.

    Args:
      model: A compiled Keras model, or a zero-argument function returning one.
      caller: Name of the public function, for error messages.

    Raises:
      ModelTypeError: ``model`` is neither a model nor a function returning one.
      ModelError: The model is not compiled or has no weights yet.
    """
    if not isinstance(model, keras.Model) and callable(model):
        built = model()
        if not isinstance(built, keras.Model):
            raise ModelTypeError(
                f"{caller}: the `model` function must return a compiled keras.Model. "
                f"Received a function returning {type(built).__name__}. Return the "
                f"model from the function after calling `model.compile(...)`."
            )
        model = built
    if not isinstance(model, keras.Model):
        raise ModelTypeError(
            f"{caller}: expected `model` to be a compiled keras.Model or a "
            f"zero-argument function returning one. Received: {model!r} of type "
            f"{type(model).__name__}."
        )
    if getattr(model, "optimizer", None) is None or not _is_compiled(model):
        raise ModelError(
            f"{caller}: the model {model.name!r} is not compiled. Call "
            f"`model.compile(optimizer=..., loss=..., metrics=...)` first: kerasfed "
            f"takes the optimizer, loss and metrics from compile()."
        )
    if not model.built or not model.weights:
        raise ModelError(
            f"{caller}: the model {model.name!r} has no weights yet, so its input "
            f"shape is unknown. Build it first: start it with `keras.Input(shape=...)`, "
            f"or call `model.build(input_shape)`."
        )
    return model


def _is_compiled(model: "keras.Model") -> bool:
    # Keras 2 sets `_is_compiled`; Keras 3 sets `compiled`.
    return bool(getattr(model, "_is_compiled", False) or getattr(model, "compiled", False))


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to rebuild a compiled Keras model.

    Attributes:
      model_class: The Keras class (Sequential, Functional/Model, or a subclass).
      config: ``model.get_config()``.
      weights: ``model.get_weights()`` at capture time.
      compile_config: ``model.get_compile_config()`` (serialized compile arguments).
      compile_args: The live compile arguments, used only when the serialized form
        cannot be deserialized (e.g. an unregistered custom loss function).
    """

    model_class: type
    config: dict
    weights: tuple[np.ndarray, ...]
    compile_config: dict
    compile_args: dict = dataclasses.field(repr=False)

    @classmethod
    def from_model(cls, model: "keras.Model", *, caller: str, rebuild: bool = True) -> "ModelRecipe":
        """Captures ``model``'s architecture, weights and compile settings.

        Args:
          model: A compiled Keras model.
          caller: Name of the public function, for error messages.
          rebuild: Whether the recipe must be able to rebuild the model (checked by
            rebuilding it once). With False, a model without a usable config (a
            subclassed model) gives a recipe with an empty ``config`` whose
            ``build`` raises.

        Raises:
          ModelError: ``rebuild`` and the model's architecture cannot be serialized (a
            subclassed model without ``get_config``/``from_config``).
        """
        try:
            config = model.get_config()
            if rebuild:
                # Rebuilding is the only reliable check that the config is complete.
                model.__class__.from_config(copy.deepcopy(config))
        except (NotImplementedError, TypeError, ValueError, KeyError) as err:
            if not rebuild:  # the native engine trains the model itself
                config = {}
            else:
                raise ModelError(
                    f"{caller}: cannot rebuild the model {model.name!r} of class "
                    f"{type(model).__name__} from its config ({type(err).__name__}: {err}). "
                    f"Subclassed models need `get_config()` and `from_config()`; or pass a "
                    f"zero-argument function that builds and compiles the model, or use a "
                    f"Sequential or functional model."
                ) from err
        return cls(
            model_class=model.__class__,
            config=config,
            weights=tuple(np.array(w) for w in model.get_weights()),
            compile_config=model.get_compile_config() or {},
            compile_args=_live_compile_args(model),
        )

    def optimizer_config(self) -> dict:
        """``{"class_name": ..., "config": {...}}`` of the compiled optimizer."""
        opt = self.compile_args["optimizer"]
        return {"class_name": type(opt).__name__, "config": opt.get_config()}

    def build(self, *, compile: bool = True, weights: bool = True) -> "keras.Model":
        """Builds a fresh model (new variables in the current scope/graph)."""
        model = self.model_class.from_config(copy.deepcopy(self.config))
        if weights:
            model.set_weights(list(self.weights))
        if compile:
            self.compile(model)
        return model

    def compile(self, model: "keras.Model") -> None:
        """Compiles ``model`` with fresh copies of the recipe's compile arguments."""
        try:
            model.compile_from_config(copy.deepcopy(self.compile_config))
            return
        except (TypeError, ValueError, KeyError, AttributeError):
            pass  # e.g. an unregistered custom function: fall back to live objects
        args = dict(self.compile_args)
        args["optimizer"] = _fresh(args["optimizer"])
        args["metrics"] = _fresh_metrics(args.get("metrics"))
        args["weighted_metrics"] = _fresh_metrics(args.get("weighted_metrics"))
        model.compile(**{k: v for k, v in args.items() if v is not None})

    def new_loss(self) -> Any:
        """A fresh loss object/function equal to the compiled one."""
        loss = self.compile_config.get("loss", self.compile_args.get("loss"))
        try:
            rebuilt = keras.losses.get(copy.deepcopy(loss))
            # Keras 2 may hand back an unregistered class's name instead of raising.
            if callable(rebuilt):
                return rebuilt
        except (TypeError, ValueError):
            pass
        return _fresh(self.compile_args.get("loss"))


def _live_compile_args(model: "keras.Model") -> dict:
    args: dict = {"optimizer": model.optimizer}
    getter = getattr(model, "_get_compile_args", None)  # Keras 2
    if getter is not None:
        live = getter(user_metrics=True)
        args.update({k: live.get(k) for k in ("loss", "metrics", "loss_weights", "weighted_metrics")})
        return args
    compile_config = getattr(model, "_compile_config", None)  # Keras 3
    live = getattr(compile_config, "config", {}) or {}
    args.update({k: live.get(k) for k in ("loss", "metrics", "loss_weights", "weighted_metrics")})
    return args


def _fresh(obj: Any) -> Any:
    """A new instance of a Keras object with the same config; functions as they are."""
    if obj is None or isinstance(obj, str) or not hasattr(obj, "get_config"):
        return obj
    return obj.__class__.from_config(obj.get_config())


def _fresh_metrics(metrics: Any) -> Any:
    if metrics is None:
        return None
    if isinstance(metrics, dict):
        return {k: _fresh_metrics(v) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [_fresh_metrics(m) for m in metrics]
    return _fresh(metrics)
