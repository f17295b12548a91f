"""CKA and L2 distance of a seed pair (taxonomy spec: CKA with a linear kernel on both
models' outputs for the same probe inputs; L2 over the trainable parameters)."""

from __future__ import annotations

from torch import nn

from workers.base.footprint import Need
from workers.core.config import TrialConfig
from workers.metrics import Cost
from workers.pair_metrics import PAIR_METRICS, PairConfig, PairContext, PairMeasurement, pairwise

PROBE_SEED = 0  # every pair of a sweep is compared on the same CKA probe inputs
SCALARS = ("cka_logits", "cka_softmax", "l2_distance")


def passes(options: PairConfig, cfg: TrialConfig) -> float:
    """Both models on the probe inputs."""
    return 2.0 * min(options.cka_samples, cfg.data.n_train())


def memory(options: PairConfig, cfg: TrialConfig) -> Need:
    """The two models; their outputs are compared without a graph."""
    return Need(2, 0, "pairs.cka_samples")


@PAIR_METRICS.register("similarity", scalars=SCALARS, live=SCALARS, cost=Cost(passes), memory=memory)
def similarity(model_a: nn.Module, model_b: nn.Module, options: PairConfig, context: PairContext) -> PairMeasurement:
    inputs = pairwise.mixup_inputs(context.splits.x_train, options.cka_samples, options.cka_mixup_alpha, PROBE_SEED)
    distance = pairwise.l2_distance(pairwise.trainable_weights(model_a), pairwise.trainable_weights(model_b))
    outputs = pairwise.output_similarity(model_a, model_b, inputs, context.cfg.measure.eval_batch_size)
    return PairMeasurement({"l2_distance": distance, **outputs})
