"""CKA and L2 distance of a seed pair (taxonomy spec: CKA with a linear kernel on both
models' outputs for the same probe inputs; L2 over the trainable parameters)."""

from __future__ import annotations

from torch import nn

from workers import pairwise
from workers.pair_metrics import PAIR_METRICS, PairConfig, PairContext, PairMeasurement

PROBE_SEED = 0  # every pair of a sweep is compared on the same CKA probe inputs


@PAIR_METRICS.register("similarity", scalars=("cka_logits", "cka_softmax", "l2_distance"))
def similarity(model_a: nn.Module, model_b: nn.Module, options: PairConfig, context: PairContext) -> PairMeasurement:
    inputs = pairwise.mixup_inputs(context.splits.x_train, options.cka_samples, options.cka_mixup_alpha, PROBE_SEED)
    distance = pairwise.l2_distance(pairwise.trainable_weights(model_a), pairwise.trainable_weights(model_b))
    outputs = pairwise.output_similarity(model_a, model_b, inputs, context.cfg.measure.eval_batch_size)
    return PairMeasurement({"l2_distance": distance, **outputs})
