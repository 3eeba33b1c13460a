"""Aggregators against numpy references, on stacked updates (no training).

Each combiner is recomputed here by the plainest numpy loop its paper describes;
the chain's checks are exercised one bad input at a time.
"""

from __future__ import annotations


import dataclasses

import numpy as np
import pytest

import kerasfed
from kerasfed.federated import aggregators as agg
from kerasfed.federated.aggregators import accounting
from kerasfed.federated.aggregators.bulyan import bulyan_selection
from kerasfed.federated.aggregators.krum import krum_scores
from kerasfed.federated.aggregators.secure_sum import (
    dropout_masks,
    field_bits,
    mask_pairs,
    masked_vectors,
)
from kerasfed.federated.attack import Attack, flip_labels
from kerasfed.federated.client_state import ClientStateStore

pytestmark = pytest.mark.native


def _context(n, *, seed=0, round_num=0, weights=None, expected=None):
    return agg.RoundContext(cids=[f"c{i}" for i in range(n)],
                            weights=np.ones(n) if weights is None else np.asarray(weights),
                            expected_clients=expected or n, seed=seed, round_num=round_num)


def _updates(n, d=7, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _combine(combiner, updates, **context):
    out, _, _ = combiner.combine(updates, _context(len(updates), **context), {})
    return out


# -- combiners ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 6])
def test_median_is_the_middle_value_of_each_coordinate(n):
    u = _updates(n)
    u[:, 0] = 1.0  # ties
    expected = []
    for j in range(u.shape[1]):
        col = sorted(u[:, j].tolist())
        expected.append(col[n // 2] if n % 2 else (col[n // 2 - 1] + col[n // 2]) / 2)
    np.testing.assert_allclose(_combine(agg.Median(), u), expected, rtol=1e-6)


@pytest.mark.parametrize("n,beta", [(5, 0.2), (6, 0.2), (10, 0.3), (4, 0.0)])
def test_trimmed_mean_drops_beta_at_each_end(n, beta):
    u = _updates(n)
    k = int(np.floor(beta * n))
    expected = [np.mean(sorted(u[:, j].tolist())[k:n - k]) for j in range(u.shape[1])]
    np.testing.assert_allclose(_combine(agg.TrimmedMean(beta), u), expected, rtol=1e-5)


@pytest.mark.parametrize("combiner", [agg.Median(), agg.TrimmedMean(0.2), agg.Bulyan(1)],
                         ids=["median", "trimmed_mean", "bulyan"])
def test_coordinate_wise_combiners_give_the_same_result_in_column_blocks(combiner, monkeypatch):
    from kerasfed.federated.aggregators import _base

    u = _updates(9, d=37, seed=4)
    whole = _combine(combiner, u)
    monkeypatch.setattr(_base, "_COLUMN_BLOCK_BYTES", 9 * 4 * 5)  # blocks of 5 columns, 8 blocks
    np.testing.assert_array_equal(_combine(combiner, u), whole)
    assert whole.dtype == u.dtype and whole.shape == (37,)


def test_mean_uses_the_weights():
    u = _updates(4)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(_combine(agg.Mean(), u, weights=w),
                               (w[:, None] * u).sum(0) / w.sum(), rtol=1e-6)


def _krum_reference(u, f):
    n = len(u)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((u[i] - u[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:max(1, n - f - 2)]))
    return np.asarray(scores)


@pytest.mark.parametrize("n,f,select", [(7, 2, 1), (8, 2, 3), (9, 1, 4)])
def test_krum_scores_and_selection(n, f, select):
    u = _updates(n, seed=n)
    u[0] += 50.0  # an outlier never selected
    scores = _krum_reference(u.astype(np.float64), f)
    np.testing.assert_allclose(krum_scores(u, f), scores, rtol=1e-6)
    chosen = np.argsort(scores, kind="stable")[:select]
    assert 0 not in chosen
    np.testing.assert_allclose(_combine(agg.Krum(byzantine=f, select=select), u),
                               u[chosen].mean(0), rtol=1e-5)


def test_krum_ties_go_to_the_earlier_client():
    u = np.zeros((5, 3), np.float32)  # all scores equal
    np.testing.assert_array_equal(_combine(agg.Krum(byzantine=1), u), u[0])
    u = np.ones((5, 3), np.float32) * np.arange(5)[:, None]
    u[3] = u[1]  # clients 1 and 3 tie; 1 comes first
    assert krum_scores(u, 1)[1] == krum_scores(u, 1)[3]


def test_bulyan_against_its_definition():
    n, f = 7, 1
    u = _updates(n, d=5, seed=3)
    u[2] *= 40.0
    # Reference: repeated Krum picks n - 2f, then the beta values nearest the median.
    pool, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        sub = u[pool].astype(np.float64)
        best = int(np.argsort(_krum_reference(sub, f), kind="stable")[0])
        picked.append(pool.pop(best))
    assert bulyan_selection(u, f).tolist() == picked
    beta = len(picked) - 2 * f
    sel = u[picked]
    expected = []
    for j in range(u.shape[1]):
        med = np.median(sel[:, j])
        nearest = sorted(range(len(sel)), key=lambda i: (abs(sel[i, j] - med), i))[:beta]
        expected.append(np.mean(sel[nearest, j]))
    assert 2 not in picked
    np.testing.assert_allclose(_combine(agg.Bulyan(byzantine=f), u), expected, rtol=1e-5)


# -- transforms -------------------------------------------------------------------------------
def test_clip_norm_scales_long_updates_only():
    u = np.array([[3.0, 4.0], [0.3, 0.4]], np.float32)
    out, _, logs = agg.ClipNorm(1.0).apply(u, _context(2), {})
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)
    assert logs == {"clip_norm": 1.0, "clipped_fraction": 0.5}


def test_adaptive_clip_converges_to_the_target_quantile():
    clip = agg.ClipNorm(0.01, target_quantile=0.3, learning_rate=0.2)
    state = clip.initial_state()
    norms = np.random.default_rng(0).uniform(1.0, 3.0, 200)  # the 0.3 quantile is 1.6
    for round_num in range(300):
        u = np.zeros((200, 2), np.float32)
        u[:, 0] = norms
        _, state, _ = clip.apply(u, _context(200, round_num=round_num), state)
    assert abs(float(np.mean(norms <= float(state["clip_norm"]))) - 0.3) < 0.05


def test_zeroing_zeros_updates_above_the_threshold_and_keeps_their_weight():
    u = np.array([[3.0, 4.0], [0.3, 0.4]], np.float32)
    out, _, logs = agg.Zeroing(1.0).apply(u, _context(2), {})
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0], [0.3, 0.4]], np.float32))
    assert logs["zeroed_fraction"] == 0.5


@pytest.mark.parametrize("rotation", [False, True])
def test_quantize_is_unbiased(rotation):
    u = _updates(1, d=33, seed=5).repeat(4000, axis=0)
    out = agg.Quantize(bits=2, rotation=rotation).quantize(u, np.random.default_rng(1))
    assert not np.allclose(out[0], u[0])  # each draw is quantized ...
    np.testing.assert_allclose(out.mean(0), u[0], atol=0.05)  # ... its mean is not


def test_quantize_values_lie_on_the_levels():
    u = _updates(3, d=50)
    out = agg.Quantize(bits=3).quantize(u, np.random.default_rng(0))
    for row, q in zip(u, out):
        levels = np.linspace(row.min(), row.max(), 8)
        assert np.abs(q[:, None] - levels[None]).min(axis=1).max() < 1e-5


def test_quantize_bytes_shrink_by_32_over_bits():
    dense = agg.Chain((), agg.Mean()).update_bytes(100_000, clients=10)
    for bits in (8, 4):
        small = agg.Chain((agg.Quantize(bits=bits),), agg.Mean()).update_bytes(100_000, 10)
        assert abs(dense / small - 32 / bits) < 0.01


def test_top_k_keeps_the_largest_and_remembers_the_rest():
    top = agg.TopK(0.25)
    store = ClientStateStore()
    u = np.array([[1.0, -5.0, 0.5, 2.0], [0.1, 0.2, 0.3, -0.4]], np.float32)
    ctx = dataclasses.replace(_context(2), client_states=store, step="1/")
    sent, state, _ = top.apply(u, ctx, {})
    np.testing.assert_allclose(sent, [[0, -5, 0, 0], [0, 0, 0, -0.4]], rtol=1e-6)
    assert state == {}  # the residuals live in the client state store
    residuals = store.table("1/residual", [np.zeros(4, np.float32)])
    np.testing.assert_allclose(residuals.read(["c0"])[0], [[1.0, 0.0, 0.5, 2.0]])
    # Next round the memory is added before choosing: client 0's 2.0 + 2.0 wins.
    sent2, _, _ = top.apply(np.array([[0, 0, 0, 2.0]], np.float32),
                            agg.RoundContext(["c0"], np.ones(1), 1, 0, 1, store, "1/"), state)
    np.testing.assert_array_equal(sent2, [[0, 0, 0, 4.0]])
    assert "c1" in residuals  # absent clients keep their memory
    np.testing.assert_allclose(residuals.read(["c1"])[0], [[0.1, 0.2, 0.3, 0.0]])


def test_two_top_k_steps_of_a_chain_keep_their_own_residuals():
    store = ClientStateStore()
    u = np.array([[4.0, -3.0, 2.0, 1.0]], np.float32)
    ctx = dataclasses.replace(_context(1), client_states=store)
    out, _, _ = agg.Chain((agg.TopK(0.75), agg.TopK(0.25)), agg.Mean()).run(u, ctx, {})
    np.testing.assert_array_equal(out, [4.0, 0.0, 0.0, 0.0])
    assert set(store.tables) == {"0/residual", "1/residual"}
    np.testing.assert_array_equal(store.tables["0/residual"].read(["c0"])[0], [[0, 0, 0, 1.0]])
    np.testing.assert_array_equal(store.tables["1/residual"].read(["c0"])[0], [[0, -3.0, 2.0, 0]])


def test_top_k_with_error_feedback_needs_a_client_state_store():
    with pytest.raises(agg.AggregatorError, match="TopK.*no client state store.*ClientStateStore"):
        agg.TopK(0.5).apply(_updates(2, 4), _context(2), {})
    sent, _, _ = agg.TopK(0.5, error_feedback=False).apply(_updates(2, 4), _context(2), {})
    assert (sent != 0).sum() == 4


# -- DP ---------------------------------------------------------------------------------------
def test_dp_mean_without_noise_is_the_clipped_sum_over_expected_clients():
    u = _updates(4) * 3
    out, _, logs = agg.DPMean(noise_multiplier=0.0, clip_norm=1.0).combine(
        u, _context(4, expected=5), {})
    clipped = [r * min(1.0, 1.0 / np.linalg.norm(r)) for r in u.astype(np.float64)]
    np.testing.assert_allclose(out, np.sum(clipped, 0) / 5, rtol=1e-5)
    assert logs["noise_std"] == 0.0


def test_dp_mean_noise_std_matches_noise_multiplier_clip_over_expected():
    dp = agg.DPMean(noise_multiplier=1.3, clip_norm=0.5)
    u = np.zeros((4, 2000), np.float32)
    draws = np.stack([dp.combine(u, _context(4, round_num=r, expected=8), {})[0]
                      for r in range(20)])
    assert abs(draws.std() - 1.3 * 0.5 / 8) < 0.03 * 1.3 * 0.5 / 8
    assert dp.combine(u, _context(4, expected=8), {})[2]["noise_std"] == pytest.approx(1.3 * 0.5 / 8)


def test_dp_mean_adaptive_noise_split_as_tff():
    dp = agg.DPMean(noise_multiplier=1.0, clip_norm=0.1, target_quantile=0.5)
    value, count = dp.noise_parameters(100)
    assert count == 5.0
    assert value == pytest.approx((1.0 - (2 * 5.0) ** -2) ** -0.5)
    with pytest.raises(kerasfed.AggregatorError, match="clipped_count_stddev"):
        agg.DPMean(noise_multiplier=1.0, clip_norm=0.1, target_quantile=0.5).noise_parameters(10)


@pytest.mark.parametrize("sampling", ["poisson", "uniform"])
def test_epsilon_equals_dp_accountings_for_the_same_event(sampling):
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(1.1)
    if sampling == "poisson":
        event = dp_accounting.PoissonSampledDpEvent(0.05, gaussian)
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    else:
        event = dp_accounting.SampledWithoutReplacementDpEvent(200, 10, gaussian)
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    reference = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    reference.compose(event, 30)
    ours = accounting.epsilon(1.1, 30, delta=1e-5, sampling=sampling, num_clients=200,
                              clients_per_round=10)
    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert accounting.epsilon(1.1, 31, delta=1e-5, sampling=sampling, num_clients=200,
                              clients_per_round=10) > ours


def test_pld_accountant_refuses_uniform_sampling():
    with pytest.raises(kerasfed.AggregatorError, match="poisson"):
        accounting.check_supported("pld", sampling="uniform", noise_multiplier=1.0)
    accounting.check_supported("pld", sampling="poisson", noise_multiplier=1.0)


# -- secure sum -------------------------------------------------------------------------------
def test_secure_sum_masks_cancel_and_equal_quantize_then_mean():
    n = 12
    u = _updates(n, d=40) * 0.3
    ctx = _context(n, seed=4, round_num=2)
    secure = agg.SecureSum(bits=10, clip_range=1.0)
    levels, _, _ = secure.quantizer.levels(u.astype(np.float64), ctx.rng("quantize"))
    modulus = 2**14
    masked = masked_vectors(levels, ctx, modulus)
    assert (masked != levels.astype(np.int64)).mean() > 0.99  # the server sees masks ...
    np.testing.assert_array_equal(masked.sum(0) % modulus, levels.sum(0).astype(np.int64))
    assert len(mask_pairs(n)) < n * (n - 1) // 2  # SecAgg+'s sparse pairing
    out = _combine(secure, u, seed=4, round_num=2)
    quantized, _, _ = agg.Quantize(bits=10, clip_range=1.0).apply(u, ctx, {})
    np.testing.assert_allclose(out, quantized.mean(0), atol=1e-6)


def test_secure_sum_with_dropouts_unmasks_to_the_survivors_exact_mean():
    # 12 sampled clients, 3 dropped out after the masks were agreed.
    sampled = [f"c{i}" for i in range(12)]
    dropped = ("c3", "c7", "c8")
    survivors = [c for c in sampled if c not in dropped]
    u = _updates(len(survivors), d=40) * 0.3
    ctx = agg.RoundContext(cids=survivors, weights=np.ones(len(survivors)), expected_clients=12,
                           seed=4, round_num=2, dropped=dropped)
    secure = agg.SecureSum(bits=10, clip_range=1.0)
    levels, _, _ = secure.quantizer.levels(u.astype(np.float64), ctx.rng("quantize"))
    levels = levels.astype(np.int64)
    # The field is sized for the 12 sampled clients, as update_bytes counts it.
    modulus = 2 ** field_bits(10, 12)
    assert modulus == 2**14 and secure.update_bytes(40, clients=12) == 14 * 40 // 8
    masked = masked_vectors(levels, ctx, modulus)
    assert (masked != levels).mean() > 0.99
    # The survivors' masks with the dropped clients are still in their sum ...
    assert (masked.sum(0) % modulus != levels.sum(0)).mean() > 0.99
    # ... until the server removes them (SecAgg's unmasking): the exact integer sum.
    unmasked = (masked.sum(0) - dropout_masks(ctx, modulus, 40)) % modulus
    np.testing.assert_array_equal(unmasked, levels.sum(0))
    out, _, _ = secure.combine(u, ctx, {})
    quantized, _, _ = agg.Quantize(bits=10, clip_range=1.0).apply(u, ctx, {})
    np.testing.assert_allclose(out, quantized.mean(0), atol=1e-6)
    # The same as a round of the survivors alone, bit for bit (the sums are exact).
    alone = dataclasses.replace(ctx, dropped=())
    np.testing.assert_array_equal(out, secure.combine(u, alone, {})[0])
    # The pairs do not depend on who drops out: with c3 reporting, c0 sends the same.
    everyone = dataclasses.replace(ctx, cids=sampled, dropped=())
    all_levels = np.zeros((12, 40), np.int64)
    all_levels[[sampled.index(c) for c in survivors]] = levels
    np.testing.assert_array_equal(masked_vectors(all_levels, everyone, modulus)[0], masked[0])
    assert not dropout_masks(everyone, modulus, 40).any()


# -- chain checks -----------------------------------------------------------------------------
def test_chain_resolution():
    chain = agg.resolve_chain([agg.ClipNorm(1.0), agg.Quantize(bits=8), "mean"])
    assert [s.name for s in chain.steps] == ["clip_norm", "quantize", "mean"]
    assert agg.resolve_chain("median").combiner == agg.Median()
    assert isinstance(agg.resolve_chain([agg.ClipNorm(1.0)]).combiner, agg.Mean)
    assert agg.resolve_chain("mean").is_plain_mean


@pytest.mark.parametrize("value,error,match", [
    (["median", "mean"], kerasfed.AggregatorError, "2 combiners"),
    (["mean", agg.ClipNorm(1.0)], kerasfed.AggregatorError, "come after the combiner"),
    ([agg.DPMean(1.0, 1.0), agg.DPMean(1.0, 1.0)], kerasfed.AggregatorError, "twice"),
    ("average", kerasfed.AggregatorError, "unknown aggregator"),
    ([], kerasfed.AggregatorError, "empty"),
    (3, kerasfed.AggregatorTypeError, "Received: 3"),
])
def test_invalid_chains_are_refused_with_a_valid_example(value, error, match):
    with pytest.raises(error, match=match):
        agg.resolve_chain(value)


@pytest.mark.parametrize("make,match", [
    (lambda: agg.ClipNorm(0.0), "clip_norm` > 0.0"),
    (lambda: agg.ClipNorm(-1.0), "clip_norm` > 0.0"),
    (lambda: agg.DPMean(noise_multiplier=1.0, clip_norm=0.0), "clip_norm"),
    (lambda: agg.DPMean(noise_multiplier=-1.0, clip_norm=1.0), "noise_multiplier"),
    (lambda: agg.DPMean(1.0, 1.0, accountant="prv"), "accountant"),
    (lambda: agg.TrimmedMean(beta=0.5), "beta` >= 0.0 and < 0.5"),
    (lambda: agg.Zeroing(0.0), "threshold"),
    (lambda: agg.Quantize(bits=0), "bits"),
    (lambda: agg.TopK(0.0), "fraction"),
    (lambda: agg.Krum(byzantine=-1), "byzantine"),
    (lambda: Attack("poison", 0.3), "kind"),
    (lambda: Attack("sign_flip", 1.0), "fraction"),
])
def test_bad_settings_are_refused(make, match):
    with pytest.raises(kerasfed.AggregatorError, match=match):
        make()


def test_bad_setting_types_are_refused():
    with pytest.raises(kerasfed.AggregatorTypeError, match="an int"):
        agg.Krum(byzantine=1.5)
    with pytest.raises(kerasfed.AggregatorTypeError, match="True or False"):
        agg.Quantize(rotation="yes")


# -- attacks ----------------------------------------------------------------------------------
def test_attacks_change_only_the_malicious_rows():
    u = _updates(4)
    bad = np.array([True, False, True, False])
    rng = np.random.default_rng(0)
    flipped = Attack("sign_flip", 0.5, scale=10).corrupt(u, bad, rng)
    np.testing.assert_allclose(flipped[bad], -10 * u[bad])
    np.testing.assert_array_equal(flipped[~bad], u[~bad])
    noisy = Attack("gaussian", 0.5, scale=2).corrupt(u, bad, rng)
    np.testing.assert_allclose(np.linalg.norm(noisy[bad], axis=1),
                               2 * np.linalg.norm(u[bad], axis=1), rtol=1e-5)
    ids = [f"c{i}" for i in range(10)]
    assert len(Attack("scale", 0.3).attackers(ids, seed=1)) == 3
    assert Attack("scale", 0.3).attackers(ids, seed=1) == Attack("scale", 0.3).attackers(ids, 1)


def test_label_flip():
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9]), num_classes=10, sparse=True),
                                  [9, 8, 0])
    np.testing.assert_array_equal(flip_labels(np.eye(3)[[0]], num_classes=3, sparse=False),
                                  [[0, 0, 1]])
