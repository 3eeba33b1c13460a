"""kerasfed's aggregation chains as ``tff.aggregators`` factories.

The chain's combiner becomes the innermost factory and each transform wraps it,
the first transform outermost (it sees the client values first). ``Quantize``
becomes the value-sum of the mean (TFF quantizes the weighted values).
``DPMean`` counts every client once, so the learning process is built
unweighted around it. ``SecureSum`` stays native: TFF's ``SecureSumFactory``
builds, but TFF 0.87's worker cannot run its intrinsics. ``arguments.py`` refuses, before training, the
aggregators TFF 0.87 does not have.
"""

from __future__ import annotations

from typing import Any

import tensorflow_federated as tff

from kerasfed.federated import aggregators as agg


def model_aggregator(chain: agg.Chain, *, weighted: bool, expected_clients: int) -> Any:
    """(the factory, whether the process must be built unweighted); None: TFF's default."""
    if chain.is_plain_mean:
        return None
    aggregators = tff.aggregators
    combiner = chain.combiner
    transforms = list(chain.transforms)
    value_sum = None
    if transforms and isinstance(transforms[-1], agg.Quantize):
        bits = transforms.pop().bits
        value_sum = aggregators.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=bits, threshold=0)
    if isinstance(combiner, agg.DPMean):
        if combiner.adaptive:
            _, count_std = combiner.noise_parameters(expected_clients)
            factory = aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
                noise_multiplier=float(combiner.noise_multiplier),
                clients_per_round=float(expected_clients),
                initial_l2_norm_clip=float(combiner.clip_norm),
                target_unclipped_quantile=float(combiner.target_quantile),
                learning_rate=float(combiner.learning_rate),
                clipped_count_stddev=count_std,
            )
        else:
            factory = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
                noise_multiplier=float(combiner.noise_multiplier),
                clients_per_round=float(expected_clients), clip=float(combiner.clip_norm))
        weighted = False
    else:  # the mean
        kwargs = {"value_sum_factory": value_sum} if value_sum is not None else {}
        factory = (aggregators.MeanFactory(**kwargs) if weighted
                   else aggregators.UnweightedMeanFactory(**kwargs))
    for step in reversed(transforms):
        if isinstance(step, agg.ClipNorm):
            norm = float(step.clip_norm)
            if step.adaptive:
                norm = aggregators.PrivateQuantileEstimationProcess.no_noise(
                    initial_estimate=norm, target_quantile=float(step.target_quantile),
                    learning_rate=float(step.learning_rate))
            factory = aggregators.clipping_factory(norm, factory)
        elif isinstance(step, agg.Zeroing):
            factory = aggregators.zeroing_factory(float(step.threshold), factory, norm_order=2.0)
        else:  # arguments.py lets only these through
            raise ValueError(f"the TFF engine cannot translate {step!r}")
    return factory, weighted
