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

What a client does is the algorithm's (``algorithms._base``), called here with
one client's tensors in either form: an optional pass computing the full
gradient at the broadcast weights (FedSGD, Mime-lite), the local steps
(``Algorithm.local_step``) and the client's end (``Algorithm.client_end``). The
algorithm never sees the client axis, the padding or the masks.

The compiled function returns, per client (a leading axis): ``update``,
``client_state`` and ``extras`` (``ClientOutput``'s fields), the model's
non-trainable ``state``, ``loss_sum`` and ``examples``, and the sums behind
the client's own metric values (``metric_totals`` / ``metric_counts``,
``client_train_metrics.py``).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from kerasfed.federated.algorithms import Algorithm, ClientContext
from kerasfed.federated.engines.native.client_train_metrics import (
    client_sums,
    per_client_names,
)
from kerasfed.federated.output_parts import update_metrics


class ClientWork:
    """Builds the compiled chunk function for one training configuration.

    Args:
      forward: A ``StatelessForward`` (both forms) or ``VariableForward``
        (sequential only).
      rule: The client update rule (``optimizers.Rule``), or None (FedSGD); its
        learning rate is replaced by the round's (an argument of ``run``).
      algorithm: The ``Algorithm``.
      metrics: The round's Keras metric objects, updated in place.
      lockstep: Which form.
      jit_compile: Compile with XLA.
      in_flight: Clients the sequential form trains side by side.
      personal_state: Positions of the model's non-trainable weights each client
        keeps (personal layers' moving statistics): ``run``'s ``own_state`` gives
        each client's values there ([C, ...] each), instead of the round's.
    """

    def __init__(self, forward, rule, *, algorithm: Algorithm, metrics: list, lockstep: bool,
                 jit_compile: bool, in_flight: int = 1, personal_state: tuple = ()):
        self.forward = forward
        self.rule = rule
        self.algorithm = algorithm
        self.metrics = metrics
        self.lockstep = lockstep
        # Clients the sequential form trains at the same time (it needs a
        # stateless forward pass: clients must not share variables).
        self.in_flight = in_flight
        self.personal_state = tuple(personal_state)
        self._client_metric_count = len(per_client_names(metrics))
        body = self._lockstep if lockstep else self._sequential
        self.run = tf.function(body, jit_compile=jit_compile, reduce_retracing=True)

    def _rule_at(self, learning_rate):
        # The rate is an argument of the compiled function, so a rate that changes
        # by round does not retrace it.
        if self.rule is None:
            return None
        return dataclasses.replace(self.rule, learning_rate=learning_rate)

    def _update_metrics(self, y, pred, weight, sw=None):
        update_metrics(self.metrics, y, pred, weight, sw)

    def _client_sums(self, totals, counts, y, pred, weight, sw=None):
        """``totals``/``counts`` ([C, metrics]) plus one step's (inputs with a client axis)."""
        t, c = client_sums(self.metrics, y, pred, weight, sw)
        return totals + t, counts + c

    # -- lockstep --------------------------------------------------------------------
    def _own(self, state: list, own_state: list, pick) -> list:
        """``state`` with each client's own values (``pick(t)`` of ``own_state``'s
        tensors) at the personal positions."""
        state = list(state)
        for i, t in zip(self.personal_state, own_state):
            state[i] = pick(t)
        return state

    def _lockstep(self, x, y, w, batches, counts, metric_mask, params, state, server,
                  client_states, learning_rate, own_state=(), personal=()):
        # x and y may be structures (several inputs / outputs); w (sample weights,
        # [C, rows]) may be None.
        alg = self.algorithm
        rule = self._rule_at(learning_rate)
        num = tf.shape(tf.nest.flatten(x)[0])[0]
        tile = lambda t: tf.repeat(tf.expand_dims(t, 0), num, axis=0)  # noqa: E731
        params0 = [tile(p) for p in params]
        state0 = self._own([tile(s) for s in state], own_state, lambda t: t)
        zeros = tf.zeros([num], tf.float32)
        local_steps = tf.reduce_sum(tf.cast(counts > 0, tf.float32), axis=1)
        examples = tf.reduce_sum(counts, axis=1)

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

        def context(cs, k, n, full):
            return ClientContext(broadcast_weights=params, server=server, state=list(cs),
                                 learning_rate=learning_rate, local_steps=k, examples=n,
                                 full_gradient=None if full is None else list(full))

        steps = tf.shape(batches)[1]
        loss_sum = zeros
        # Each client's metric sums (``counts`` is taken: the batches' row counts).
        metric_totals = metric_counts = tf.zeros([num, self._client_metric_count], tf.float32)
        st = state0
        full = None
        if alg.needs_full_gradient or not alg.trains_locally:
            def grad_one(args):
                p, s, *data = args
                grads, new_s, ls, elements, pred = self.forward.loss_and_grads(p, s, *data)
                count = tf.reduce_sum(data[2])
                return [g * count for g in grads], new_s, ls / elements, pred

            acc = [tf.zeros_like(p) for p in params0]
            for s in tf.range(steps):
                xb, yb, mask, wb = gather(s)
                g, new_st, ls, pred = tf.vectorized_map(
                    grad_one, (params0, st, *batch_args(xb, yb, mask, wb)),
                    fallback_to_while_loop=False)
                active = counts[:, s] > 0
                acc = [a + gi for a, gi in zip(acc, g)]
                st = [tf.where(_bcast(active, n), n, o) for n, o in zip(new_st, st)]
                if not alg.trains_locally:  # the metrics are those of the batches at w_t
                    loss_sum += ls
                    weight = mask * metric_mask[:, None]
                    self._update_metrics(flat(yb), flat(pred), flat(weight), flat(wb))
                    metric_totals, metric_counts = self._client_sums(
                        metric_totals, metric_counts, yb, pred, weight, wb)
            denom = tf.maximum(examples, 1.0)
            full = [a / _bcast(denom, a) for a in acc]

        p = params0
        if alg.trains_locally:
            # The training pass starts from the round's non-trainable state again.
            st = state0
            full_args = [] if full is None else full

            def start_one(args):
                # The broadcast weights come in per client (params0): an output that
                # does not vary over clients becomes a placeholder XLA cannot compile.
                p0, cs, k, n, *full_c = args
                ctx = dataclasses.replace(context(cs, k, n, full_c or None),
                                          broadcast_weights=list(p0))
                return list(alg.client_start(ctx))

            if type(alg).client_start is not Algorithm.client_start:  # else: params0
                p = tf.vectorized_map(
                    start_one, (params0, client_states, local_steps, examples, *full_args),
                    fallback_to_while_loop=False)

            def train_one(args):
                p, s, opt, cs, full_c, k, n, v, v_opt, *data = args
                grads, new_s, ls, elements, pred = self.forward.loss_and_grads(p, s, *data)
                ctx = context(cs, k, n, full_c if full is not None else None)
                new_p, new_opt = alg.local_step(ctx, p, grads, rule, opt)
                if own_model:  # the personal model's step, on the same batch
                    v_grads = self.forward.loss_and_grads(v, s, *data)[0]
                    v, v_opt = alg.personal_step(ctx, v, v_grads, rule, v_opt)
                return new_p, new_s, new_opt, ls / elements, pred, list(v), v_opt

            opt = tf.nest.map_structure(tile, rule.init(params)) if rule is not None else {}
            own_model = alg.trains_personal_model
            v = list(personal)
            v_opt = opt if own_model else {}
            for s in tf.range(steps):
                xb, yb, mask, wb = gather(s)
                new_p, new_st, new_opt, ls, pred, new_v, new_v_opt = tf.vectorized_map(
                    train_one, (p, st, opt, client_states, full_args, local_steps, examples,
                                v, v_opt, *batch_args(xb, yb, mask, wb)),
                    fallback_to_while_loop=False)
                active = counts[:, s] > 0
                keep = lambda n, o: tf.where(_bcast(active, n), n, o)  # noqa: E731
                p = [keep(n, o) for n, o in zip(new_p, p)]
                st = [keep(n, o) for n, o in zip(new_st, st)]
                opt = tf.nest.map_structure(keep, new_opt, opt)
                v = [keep(n, o) for n, o in zip(new_v, v)]
                v_opt = tf.nest.map_structure(keep, new_v_opt, v_opt)
                loss_sum += ls
                weight = mask * metric_mask[:, None]
                self._update_metrics(flat(yb), flat(pred), flat(weight), flat(wb))
                metric_totals, metric_counts = self._client_sums(
                    metric_totals, metric_counts, yb, pred, weight, wb)

        def end_one(args):
            p_c, cs, full_c, k, n = args
            out = alg.client_end(context(cs, k, n, full_c if full is not None else None), p_c)
            return list(out.update), list(out.state), dict(out.extras)

        update, new_client_states, extras = tf.vectorized_map(
            end_one, (p, client_states, [] if full is None else full, local_steps, examples),
            fallback_to_while_loop=False)
        return {"update": update, "client_state": new_client_states, "extras": extras,
                "state": st, "loss_sum": loss_sum, "examples": examples,
                "metric_totals": metric_totals, "metric_counts": metric_counts,
                "personal": list(personal) if not alg.trains_locally else v}

    # -- sequential ------------------------------------------------------------------
    def _sequential(self, x, y, w, batches, counts, metric_mask, params, state, server,
                    client_states, learning_rate, own_state=(), personal=()):
        # `in_flight` clients train side by side in each loop iteration: their
        # loops share nothing, so TensorFlow runs them at the same time, one core
        # each (small convolutions use a second core poorly: measured 1.1x). The
        # metric updates, the only stateful ops, wait until a client is done.
        # The chunk's client count is static unless chunks of several sizes came
        # (Poisson rounds, replicas' shares): then the function is retraced for any.
        alg = self.algorithm
        rule = self._rule_at(learning_rate)
        first_x = tf.nest.flatten(x)[0]
        num = first_x.shape[0] if first_x.shape[0] is not None else tf.shape(first_x)[0]
        k = self.in_flight

        def context(cs, steps, n, full):
            return ClientContext(broadcast_weights=list(params), server=server, state=cs,
                                 learning_rate=learning_rate, local_steps=steps, examples=n,
                                 full_gradient=full)

        # What client_end returns, traced once on stand-in values, sizes the
        # arrays its results are written into (an algorithm chooses its extras).
        probe = alg.client_end(context(
            [t[0] for t in client_states], tf.ones(()), tf.ones(()),
            list(params) if alg.needs_full_gradient or not alg.trains_locally else None),
            list(params))

        def arrays(ref):
            return tf.nest.map_structure(
                lambda t: tf.TensorArray(t.dtype, size=num, element_shape=t.shape), ref)

        update_ta, client_state_ta = arrays(list(probe.update)), arrays(list(probe.state))
        own_model = alg.trains_personal_model
        personal_ta = arrays(list(params) if own_model else [])
        extras_ta, state_ta = arrays(dict(probe.extras)), arrays(list(state))
        loss_ta = tf.TensorArray(tf.float32, size=num)
        seen_ta = tf.TensorArray(tf.float32, size=num)
        width = self._client_metric_count
        totals_ta = tf.TensorArray(tf.float32, size=num, element_shape=[width])
        counts_ta = tf.TensorArray(tf.float32, size=num, element_shape=[width])

        pred_shape: list = []  # the model's output shape per example, seen while tracing

        def one_client(c):
            n_steps = tf.reduce_sum(tf.cast(counts[c] > 0, tf.int32))
            examples = tf.reduce_sum(counts[c])
            xc = tf.nest.map_structure(lambda t: t[c], x)
            yc = tf.nest.map_structure(lambda t: t[c], y)
            wc = None if w is None else w[c]
            cs = [t[c] for t in client_states]
            # Keras 3 keeps random layers' seed states among the non-trainable
            # state (integers): offset them per client, so that clients draw
            # different Dropout masks.
            start = [t + tf.cast(c, t.dtype) if t.dtype.is_integer else t for t in state]
            start = self._own(start, own_state, lambda t: t[c])
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
            full = None
            v = [t[c] for t in personal] if own_model else []
            if alg.needs_full_gradient or not alg.trains_locally:
                acc = [tf.zeros_like(p) for p in params]
                for s in tf.range(n_steps):
                    data = batch(s)
                    grads, st, ls, elements, pred = self.forward.loss_and_grads(
                        params, st, *data)
                    count = tf.reduce_sum(data[2])
                    acc = [a + g * count for a, g in zip(acc, grads)]
                    seen += count
                    if not alg.trains_locally:
                        loss_sum += ls / elements
                        seen_ys, seen_preds, seen_ws = record(s, data, pred)
                full = [a / tf.maximum(seen, 1.0) for a in acc]
            p = list(params)
            if alg.trains_locally:
                # The training pass starts from the round's state again.
                st, seen = start, tf.zeros((), tf.float32)
                ctx = context(cs, tf.cast(n_steps, tf.float32), examples, full)
                p = list(alg.client_start(ctx))
                opt = rule.init(params) if rule is not None else {}
                v_opt = rule.init(params) if own_model else {}
                for s in tf.range(n_steps):
                    data = batch(s)
                    if own_model:  # the personal model's step, on the same batch
                        v_grads = self.forward.loss_and_grads(v, st, *data)[0]
                        v, v_opt = alg.personal_step(ctx, v, v_grads, rule, v_opt)
                        v = list(v)
                    grads, st, ls, elements, pred = self.forward.loss_and_grads(p, st, *data)
                    p, opt = alg.local_step(ctx, p, grads, rule, opt)
                    p = list(p)
                    loss_sum += ls / elements
                    seen += tf.reduce_sum(data[2])
                    seen_ys, seen_preds, seen_ws = record(s, data, pred)
            result = alg.client_end(context(cs, tf.cast(n_steps, tf.float32), examples, full), p)
            out.update(personal=list(v), update=list(result.update),
                       client_state=list(result.state),
                       extras=dict(result.extras), state=st, loss_sum=loss_sum, seen=seen,
                       n_steps=n_steps, ys=seen_ys, preds=seen_preds, ws=seen_ws)
            return out

        for g in tf.range(num // k):
            done = [one_client(g * k + j) for j in range(k)]
            for j, res in enumerate(done):
                c = g * k + j
                client_totals = client_counts = tf.zeros([width], tf.float32)
                if res["n_steps"] > 0:
                    ys = tf.nest.map_structure(lambda ta: ta.concat(), res["ys"])
                    preds = tf.nest.pack_sequence_as(res["preds"], [
                        tf.ensure_shape(ta.concat(), [None, *shape]) for ta, shape in
                        zip(tf.nest.flatten(res["preds"]), res["pred_shape"])])
                    ws = None if w is None else res["ws"].concat()
                    weight = tf.fill(tf.shape(tf.nest.flatten(ys)[0])[:1], metric_mask[c])
                    self._update_metrics(ys, preds, weight, ws)
                    one = lambda t: tf.expand_dims(t, 0)  # noqa: E731  (a client axis)
                    t_c, c_c = client_sums(
                        self.metrics, tf.nest.map_structure(one, ys),
                        tf.nest.map_structure(one, preds), one(weight),
                        None if ws is None else one(ws))
                    client_totals, client_counts = t_c[0], c_c[0]
                write = lambda ta, t, c=c: ta.write(c, t)  # noqa: E731
                update_ta = tf.nest.map_structure(write, update_ta, res["update"])
                client_state_ta = tf.nest.map_structure(write, client_state_ta,
                                                        res["client_state"])
                personal_ta = tf.nest.map_structure(write, personal_ta, res["personal"])
                extras_ta = tf.nest.map_structure(write, extras_ta, res["extras"])
                state_ta = tf.nest.map_structure(write, state_ta, res["state"])
                loss_ta = loss_ta.write(c, res["loss_sum"])
                seen_ta = seen_ta.write(c, res["seen"])
                totals_ta = totals_ta.write(c, client_totals)
                counts_ta = counts_ta.write(c, client_counts)
        stack = lambda tas: tf.nest.map_structure(lambda ta: ta.stack(), tas)  # noqa: E731
        return {"update": stack(update_ta), "client_state": stack(client_state_ta),
                "extras": stack(extras_ta), "state": stack(state_ta),
                "loss_sum": loss_ta.stack(), "examples": seen_ta.stack(),
                "metric_totals": totals_ta.stack(), "metric_counts": counts_ta.stack(),
                "personal": stack(personal_ta)}


def _bcast(values, like):
    """``values`` ([C]) reshaped to broadcast against ``like`` ([C, ...])."""
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))
