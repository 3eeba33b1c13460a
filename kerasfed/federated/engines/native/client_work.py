"""Local training of a chunk of clients as one compiled TensorFlow computation.

Two forms, the same result:

* **lockstep**: the clients' weights are stacked on a leading client axis and
  every local step runs all clients at once, ``tf.vectorized_map`` over the
  model's stateless forward pass, so many small per-client ops become a few large
  ones (optionally under XLA). Batches are padded to ``batch_size`` and masked,
  and a client with fewer steps stops changing once its batches run out, so each
  client's result is exactly what training it alone gives.
* **sequential**: one client after another inside the same ``tf.function``,
  each batch at its real size. Wins for convolutions on CPU, and is the only
  form for models whose forward pass cannot be made stateless or whose layers
  mix the examples of a batch (BatchNormalization).

What a client does is the algorithm's (``kind``):

* ``"train"`` (FedAvg, FedProx): local steps with the client rule; FedProx adds
  ``mu * (w - w_global)`` to each gradient. Returns ``w - w_global``.
* ``"gradient"`` (FedSGD): the gradient of the client's mean loss at the global
  weights, the batches' gradients weighted by their sizes. Returns it.
* ``"mime"`` (Mime-lite): that full gradient, then local steps with the client
  rule applied with the *frozen* global optimizer state. Returns both.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from kerasfed.federated.output_parts import update_metrics


class ClientWork:
    """Builds the compiled chunk function for one training configuration.

    Args:
      forward: A ``StatelessForward`` (both forms) or ``VariableForward``
        (sequential only).
      rule: The client update rule (``optimizers.Rule``), or None for FedSGD.
      kind: ``"train"``, ``"gradient"`` or ``"mime"``.
      mu: FedProx's proximal strength (0 for none).
      metrics: The round's Keras metric objects, updated in place.
      lockstep: Which form.
      jit_compile: Compile with XLA.
      in_flight: Clients the sequential form trains side by side.
    """

    def __init__(self, forward, rule, *, kind: str, mu: float, metrics: list, lockstep: bool,
                 jit_compile: bool, in_flight: int = 1):
        self.forward = forward
        self.rule = rule
        self.kind = kind
        self.mu = mu
        self.metrics = metrics
        self.lockstep = lockstep
        # Clients the sequential form trains at the same time (it needs a
        # stateless forward pass: clients must not share variables).
        self.in_flight = in_flight
        body = self._lockstep if lockstep else self._sequential
        self.run = tf.function(body, jit_compile=jit_compile, reduce_retracing=True)

    # -- metrics ---------------------------------------------------------------------
    def _update_metrics(self, y, pred, weight, sw=None):
        update_metrics(self.metrics, y, pred, weight, sw)

    # -- lockstep --------------------------------------------------------------------
    def _lockstep(self, x, y, w, batches, counts, metric_mask, params, state, global_opt):
        # x and y may be structures (several inputs / outputs); w (sample weights,
        # [C, rows]) may be None.
        num = tf.shape(tf.nest.flatten(x)[0])[0]
        tile = lambda t: tf.repeat(tf.expand_dims(t, 0), num, axis=0)  # noqa: E731
        params0 = [tile(p) for p in params]
        state0 = [tile(s) for s in state]
        zeros = tf.zeros([num], tf.float32)
        out: dict[str, Any] = {}

        def gather(step):
            idx = batches[:, step]
            take = lambda t: tf.gather(t, idx, batch_dims=1)  # noqa: E731
            xb = tf.nest.map_structure(take, x)
            yb = tf.nest.map_structure(take, y)
            mask = tf.sequence_mask(counts[:, step], tf.shape(idx)[1], dtype=tf.float32)
            wb = None if w is None else take(w)
            return xb, yb, mask, wb

        def flat_one(t):
            return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))

        def flat(t):
            return None if t is None else tf.nest.map_structure(flat_one, t)

        def batch_args(xb, yb, mask, wb):
            return (xb, yb, mask) if wb is None else (xb, yb, mask, wb)

        steps = tf.shape(batches)[1]
        if self.kind in ("gradient", "mime"):
            def grad_one(args):
                p, st, *data = args
                grads, new_st, loss_sum, elements, pred = self.forward.loss_and_grads(
                    p, st, *data)
                mask = data[2]
                count = tf.reduce_sum(mask)
                return [g * count for g in grads], new_st, loss_sum / elements, pred

            acc = [tf.zeros_like(p) for p in params0]
            st, loss_sum, seen = state0, zeros, zeros
            for s in tf.range(steps):
                xb, yb, mask, wb = gather(s)
                g, new_st, ls, pred = tf.vectorized_map(
                    grad_one, (params0, st, *batch_args(xb, yb, mask, wb)),
                    fallback_to_while_loop=False)
                active = counts[:, s] > 0
                acc = [a + gi for a, gi in zip(acc, g)]
                st = [tf.where(_bcast(active, n), n, o) for n, o in zip(new_st, st)]
                if self.kind == "gradient":  # FedSGD's metrics: the batches at w_global
                    loss_sum += ls
                    self._update_metrics(flat(yb), flat(pred),
                                         flat(mask * metric_mask[:, None]), flat(wb))
                seen += counts[:, s]
            denom = tf.maximum(seen, 1.0)
            out["gradient"] = [a / _bcast(denom, a) for a in acc]
            out["state"] = st
            if self.kind == "gradient":
                out["loss_sum"], out["examples"] = loss_sum, seen
                return out

        rule, mu, mime = self.rule, self.mu, self.kind == "mime"

        def train_one(args):
            p, st, opt, *data = args
            grads, new_st, loss_sum, elements, pred = self.forward.loss_and_grads(
                p, st, *data)
            if mu:
                grads = [g + mu * (w - w0) for g, w, w0 in zip(grads, p, params)]
            if mime:  # the frozen global state: the client's own is never advanced
                _, new_p = rule.step(global_opt, p, grads)
                new_opt = opt
            else:
                new_opt, new_p = rule.step(opt, p, grads)
            return new_p, new_st, new_opt, loss_sum / elements, pred

        p, st = params0, state0
        opt = tf.nest.map_structure(tile, rule.init(params)) if not mime else tf.zeros([num])
        loss_sum, seen = zeros, zeros
        for s in tf.range(steps):
            xb, yb, mask, wb = gather(s)
            new_p, new_st, new_opt, ls, pred = tf.vectorized_map(
                train_one, (p, st, opt, *batch_args(xb, yb, mask, wb)),
                fallback_to_while_loop=False)
            active = counts[:, s] > 0
            p = [tf.where(_bcast(active, n), n, o) for n, o in zip(new_p, p)]
            st = [tf.where(_bcast(active, n), n, o) for n, o in zip(new_st, st)]
            opt = tf.nest.map_structure(lambda n, o: tf.where(_bcast(active, n), n, o), new_opt, opt)
            loss_sum += ls
            seen += counts[:, s]
            self._update_metrics(flat(yb), flat(pred), flat(mask * metric_mask[:, None]),
                                 flat(wb))
        out["delta"] = [a - tile(b) for a, b in zip(p, params)]
        out["state"] = st
        out["loss_sum"], out["examples"] = loss_sum, seen
        return out

    # -- sequential ------------------------------------------------------------------
    def _sequential(self, x, y, w, batches, counts, metric_mask, params, state, global_opt):
        # `in_flight` clients train side by side in each loop iteration: their
        # loops share nothing, so TensorFlow runs them at the same time, one core
        # each (small convolutions use a second core poorly: measured 1.1x). The
        # metric updates, the only stateful ops, wait until a client is done.
        # The chunk's client count is static unless chunks of several sizes came
        # (Poisson rounds, replicas' shares): then the function is retraced for any.
        first_x = tf.nest.flatten(x)[0]
        num = first_x.shape[0] if first_x.shape[0] is not None else tf.shape(first_x)[0]
        k = self.in_flight
        rule, mu, kind = self.rule, self.mu, self.kind
        arrays = lambda ref: [  # noqa: E731
            tf.TensorArray(t.dtype, size=num, element_shape=t.shape) for t in ref]
        delta_ta, grad_ta, state_ta = arrays(params), arrays(params), arrays(state)
        loss_ta = tf.TensorArray(tf.float32, size=num)
        seen_ta = tf.TensorArray(tf.float32, size=num)

        pred_shape: list = []  # the model's output shape per example, seen while tracing

        def one_client(c):
            n_steps = tf.reduce_sum(tf.cast(counts[c] > 0, tf.int32))
            xc = tf.nest.map_structure(lambda t: t[c], x)
            yc = tf.nest.map_structure(lambda t: t[c], y)
            wc = None if w is None else w[c]
            # Keras 3 keeps random layers' seed states among the non-trainable
            # state (integers): offset them per client, so that clients draw
            # different Dropout masks.
            start = [t + tf.cast(c, t.dtype) if t.dtype.is_integer else t for t in state]
            seen = tf.zeros((), tf.float32)
            loss_sum = tf.zeros((), tf.float32)
            seen_ys = tf.nest.map_structure(lambda t: tf.TensorArray(
                t.dtype, size=0, dynamic_size=True, infer_shape=False,
                element_shape=tf.TensorShape([None]).concatenate(t.shape[2:])), y)
            seen_preds = tf.nest.map_structure(lambda _: tf.TensorArray(
                tf.float32, size=0, dynamic_size=True, infer_shape=False), y)
            # () rather than None without sample weights: a loop variable needs a value.
            seen_ws = () if w is None else tf.TensorArray(
                tf.float32, size=0, dynamic_size=True, infer_shape=False, element_shape=[None])
            out = {"pred_shape": pred_shape}

            def batch(s):
                n = tf.cast(counts[c, s], tf.int32)
                idx = batches[c, s, :n]
                take = lambda t: tf.gather(t, idx)  # noqa: E731
                data = (tf.nest.map_structure(take, xc), tf.nest.map_structure(take, yc),
                        tf.ones([n], tf.float32))
                return data if wc is None else (*data, take(wc))

            def record(s, data, pred):
                # The client's labels and predictions, for its metrics once it is done.
                ys = tf.nest.map_structure(lambda ta, t: ta.write(s, t), seen_ys, data[1])
                preds = tf.nest.map_structure(
                    lambda ta, t: ta.write(s, tf.cast(t, tf.float32)), seen_preds, pred)
                ws = seen_ws if w is None else seen_ws.write(s, data[3])
                pred_shape[:] = [t.shape[1:] for t in tf.nest.flatten(pred)]
                return ys, preds, ws

            st = start
            if kind in ("gradient", "mime"):
                acc = [tf.zeros_like(p) for p in params]
                for s in tf.range(n_steps):
                    data = batch(s)
                    grads, st, ls, elements, pred = self.forward.loss_and_grads(
                        params, st, *data)
                    count = tf.reduce_sum(data[2])
                    acc = [a + g * count for a, g in zip(acc, grads)]
                    seen += count
                    if kind == "gradient":
                        loss_sum += ls / elements
                        seen_ys, seen_preds, seen_ws = record(s, data, pred)
                out["gradient"] = [a / tf.maximum(seen, 1.0) for a in acc]
            if kind in ("train", "mime"):
                if kind == "mime":  # the training pass starts from the round's state again
                    st, seen = start, tf.zeros((), tf.float32)
                p = list(params)
                opt = rule.init(params)
                for s in tf.range(n_steps):
                    data = batch(s)
                    grads, st, ls, elements, pred = self.forward.loss_and_grads(
                        p, st, *data)
                    if mu:
                        grads = [g + mu * (w - w0) for g, w, w0 in zip(grads, p, params)]
                    if kind == "mime":
                        _, p = rule.step(global_opt, p, grads)
                    else:
                        opt, p = rule.step(opt, p, grads)
                    loss_sum += ls / elements
                    seen += tf.reduce_sum(data[2])
                    seen_ys, seen_preds, seen_ws = record(s, data, pred)
                out["delta"] = [a - b for a, b in zip(p, params)]
            out.update(state=st, loss_sum=loss_sum, seen=seen, n_steps=n_steps,
                       ys=seen_ys, preds=seen_preds, ws=seen_ws)
            return out

        for g in tf.range(num // k):
            done = [one_client(g * k + j) for j in range(k)]
            for j, res in enumerate(done):
                c = g * k + j
                if res["n_steps"] > 0:
                    ys = tf.nest.map_structure(lambda ta: ta.concat(), res["ys"])
                    preds = tf.nest.pack_sequence_as(res["preds"], [
                        tf.ensure_shape(ta.concat(), [None, *shape]) for ta, shape in
                        zip(tf.nest.flatten(res["preds"]), res["pred_shape"])])
                    ws = None if w is None else res["ws"].concat()
                    weight = tf.fill(tf.shape(tf.nest.flatten(ys)[0])[:1], metric_mask[c])
                    self._update_metrics(ys, preds, weight, ws)
                if "gradient" in res:
                    grad_ta = [ta.write(c, t) for ta, t in zip(grad_ta, res["gradient"])]
                if "delta" in res:
                    delta_ta = [ta.write(c, t) for ta, t in zip(delta_ta, res["delta"])]
                state_ta = [ta.write(c, t) for ta, t in zip(state_ta, res["state"])]
                loss_ta = loss_ta.write(c, res["loss_sum"])
                seen_ta = seen_ta.write(c, res["seen"])
        out: dict[str, Any] = {"state": [ta.stack() for ta in state_ta],
                               "loss_sum": loss_ta.stack(), "examples": seen_ta.stack()}
        if kind in ("gradient", "mime"):
            out["gradient"] = [ta.stack() for ta in grad_ta]
        if kind in ("train", "mime"):
            out["delta"] = [ta.stack() for ta in delta_ta]
        return out


def _bcast(values, like):
    """``values`` ([C]) reshaped to broadcast against ``like`` ([C, ...])."""
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))
