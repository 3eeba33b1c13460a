"""Aggregators: how a round's client updates become one update.

One module per aggregator (settings and numpy arithmetic); ``chain`` resolves
``fit_federated(aggregator=...)``; ``accounting`` computes DP epsilon with
dp-accounting.

==========================  ==========  =============================================
aggregator                  kind        what it does
==========================  ==========  =============================================
``"mean"`` / ``Mean()``     combiner    the algorithm's (weighted) mean (default)
``Median()``                combiner    coordinate-wise median
``TrimmedMean(beta)``       combiner    coordinate-wise mean without the beta tails
``Krum(byzantine, select)`` combiner    Krum / Multi-Krum
``Bulyan(byzantine)``       combiner    Bulyan over Krum
``DPMean(...)``             combiner    clipped, noised sum over expected clients
``SecureSum(bits, ...)``    combiner    masked modular sum of quantized updates
``ClipNorm(clip_norm)``     transform   L2 clipping, fixed or adaptive
``Zeroing(threshold)``      transform   zero updates above a norm
``Quantize(bits)``          transform   unbiased stochastic quantization
``TopK(fraction)``          transform   top-k sparsification with error feedback
==========================  ==========  =============================================
"""

from kerasfed.federated.aggregators._base import (
    Aggregator,
    AggregatorError,
    AggregatorTypeError,
    Combiner,
    RoundContext,
    Transform,
)
from kerasfed.federated.aggregators.bulyan import Bulyan
from kerasfed.federated.aggregators.chain import AGGREGATOR_NAMES, Chain, resolve_chain
from kerasfed.federated.aggregators.clip_norm import ClipNorm
from kerasfed.federated.aggregators.dp_mean import DPMean
from kerasfed.federated.aggregators.krum import Krum
from kerasfed.federated.aggregators.mean import Mean
from kerasfed.federated.aggregators.median import Median
from kerasfed.federated.aggregators.quantize import Quantize
from kerasfed.federated.aggregators.secure_sum import SecureSum
from kerasfed.federated.aggregators.top_k import TopK
from kerasfed.federated.aggregators.trimmed_mean import TrimmedMean
from kerasfed.federated.aggregators.zeroing import Zeroing

__all__ = [
    "AGGREGATOR_NAMES", "Aggregator", "AggregatorError", "AggregatorTypeError", "Bulyan",
    "Chain", "ClipNorm", "Combiner", "DPMean", "Krum", "Mean", "Median", "Quantize",
    "RoundContext", "SecureSum", "TopK", "Transform", "TrimmedMean", "Zeroing",
    "resolve_chain",
]
