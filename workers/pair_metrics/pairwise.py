"""Metrics of two models of the same grid cell: mode connectivity, CKA similarity, L2.

Pure functions over models, weights and tensors; the pair metrics
(`workers.pair_metrics.similarity`, `workers.pair_metrics.bezier`) call them, and
`workers.jobs.pair_trial` loads the models and writes the records. Conventions follow the
taxonomy spec (Yang et al. 2021):

- Mode connectivity (Garipov et al. 2018): a quadratic Bezier curve
  theta(t) = (1-t)^2 w_a + 2t(1-t) c + t^2 w_b between the two trained weight vectors,
  with the bend c trained so that the curve has low loss; evaluated on a grid of t with
  BatchNorm statistics recomputed at every t; `workers.core.mc.mode_connectivity` turns the
  curve into the paper's mc.
- CKA (Kornblith et al. 2019): linear kernel, between the two models' outputs on the
  same inputs.
- L2: the Euclidean distance of the trainable parameters (no permutation alignment).

Weights are dicts `name -> tensor` over the trainable parameters only; BatchNorm running
statistics are buffers, so they are not part of the curve (they are recomputed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from workers.training.augment import NONE, Augment
from workers.training.train import epoch_batches, evaluate, recompute_bn

Weights = dict[str, torch.Tensor]


def trainable_weights(model: nn.Module) -> Weights:
    """A copy of the trainable parameters of `model` (a copy: the curve is evaluated by
    loading its points into a model, which must not move the end points)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def l2_distance(w_a: Weights, w_b: Weights) -> float:
    """||w_a - w_b||_2 over all trainable parameters, accumulated in float64."""
    total = sum(float(((w_a[n].double() - w_b[n].double()) ** 2).sum()) for n in w_a)
    return math.sqrt(total)


# ---------------------------------------------------------------- Bezier curve


def bezier_weights(w_a: Weights, bend: Weights, w_b: Weights, t: float) -> Weights:
    """theta(t) = (1-t)^2 w_a + 2t(1-t) bend + t^2 w_b; exactly w_a at t=0 and w_b at t=1."""
    c_a, c_bend, c_b = (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t**2
    return {n: c_a * w_a[n] + c_bend * bend[n] + c_b * w_b[n] for n in w_a}


def bend_lr_factor(epoch: int, epochs: int) -> float:
    """Curve-fitting schedule of Garipov et al.: constant for the first half, then linear
    down to 1% at 90% of training, then flat."""
    progress = epoch / epochs
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - 0.99 * (progress - 0.5) / 0.4
    return 0.01


def fit_bend(
    model: nn.Module, w_a: Weights, w_b: Weights, x: torch.Tensor, y: torch.Tensor, *,
    epochs: int, lr: float, momentum: float, weight_decay: float, batch_size: int, seed: int,
    augment: Augment = NONE,
) -> tuple[Weights, float]:
    """Train the bend c of the curve from the midpoint (w_a + w_b) / 2, on batches
    augmented as the end models' were.

    Each batch draws t ~ U(0, 1) and takes an SGD step on cross-entropy at theta(t) plus
    0.5 * weight_decay * ||theta(t)||^2 (the penalty is on the point of the curve, as in
    Garipov et al., so the optimizer itself has no weight decay). `model` supplies the
    architecture and BatchNorm buffers (train mode: batch statistics); its own
    parameters are not used. Returns the bend and the last epoch's mean objective
    (non-finite if the fit diverged).
    """
    bend = {n: ((w_a[n] + w_b[n]) / 2).clone().requires_grad_(True) for n in w_a}
    optimizer = torch.optim.SGD(list(bend.values()), lr=lr, momentum=momentum)
    t_generator = torch.Generator().manual_seed(seed)
    model.train()
    objective = float("nan")
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * bend_lr_factor(epoch, epochs)
        total, batches = torch.zeros((), device=x.device), 0
        for xb, yb in epoch_batches(x, y, batch_size, seed, epoch, augment):
            t = float(torch.rand((), generator=t_generator))
            theta = bezier_weights(w_a, bend, w_b, t)
            penalty = sum((p**2).sum() for p in theta.values())
            loss = F.cross_entropy(functional_call(model, theta, (xb,)), yb) + 0.5 * weight_decay * penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            batches += 1
        objective = float(total) / max(batches, 1)
        if not math.isfinite(objective):
            break
    return {n: c.detach() for n, c in bend.items()}, objective


@torch.no_grad()
def load_weights(model: nn.Module, weights: Weights) -> None:
    """Copy `weights` into the model's trainable parameters in place."""
    params = dict(model.named_parameters())
    for n, value in weights.items():
        params[n].copy_(value)


def evaluate_curve(
    model: nn.Module, w_a: Weights, bend: Weights, w_b: Weights, ts: Sequence[float],
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]], x_bn: torch.Tensor,
    bn_batch_size: int, chunk: int,
) -> list[dict[str, float | str]]:
    """Loss, accuracy and error (percentage points) at every t on every split.

    BatchNorm statistics are recomputed on `x_bn` (training inputs) at each t, then the
    model is evaluated in eval mode. One row per (t, split).
    """
    rows: list[dict[str, float | str]] = []
    for t in ts:
        load_weights(model, bezier_weights(w_a, bend, w_b, float(t)))
        recompute_bn(model, x_bn, bn_batch_size)
        for split, (x, y) in splits.items():
            loss, acc = evaluate(model, x, y, chunk)
            rows.append({"t": float(t), "split": split, "loss": loss, "acc": acc, "err": 100.0 * (1.0 - acc)})
    return rows


# ---------------------------------------------------------------- similarity


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n inputs, (n, d1) and (n, d2).

    ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) on column-centred float64
    copies: 1 for identical inputs, symmetric, invariant to orthogonal transforms and
    isotropic scaling. NaN if either representation is constant (a collapsed model).
    """
    assert x.shape[0] == y.shape[0], f"different numbers of inputs: {x.shape[0]} vs {y.shape[0]}"
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    denominator = torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y)
    if float(denominator) == 0.0:
        return float("nan")
    return float(torch.linalg.norm(y.T @ x) ** 2 / denominator)


def mixup_inputs(x: torch.Tensor, n: int, alpha: float, seed: int) -> torch.Tensor:
    """n probe inputs drawn from `x`: with alpha > 0 each is lam * x_i + (1 - lam) * x_j
    for random i, j and lam ~ Beta(alpha, alpha) (the paper: alpha 16); alpha = 0 gives
    plain samples. Deterministic in `seed`, so both models see identical inputs."""
    rng = np.random.default_rng(seed)
    n = min(n, len(x))
    first = torch.from_numpy(rng.choice(len(x), size=n, replace=False)).to(x.device)
    if alpha == 0:
        return x[first]
    second = torch.from_numpy(rng.integers(0, len(x), size=n)).to(x.device)
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=n).astype(np.float32)).to(x.device)
    lam = lam.view(-1, *([1] * (x.dim() - 1)))
    return lam * x[first] + (1.0 - lam) * x[second]


@torch.no_grad()
def output_similarity(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor, chunk: int) -> dict[str, float]:
    """Linear CKA of the two models' logits and softmax outputs on `inputs` (eval mode)."""
    outputs = []
    for model in (model_a, model_b):
        model.eval()
        outputs.append(torch.cat([model(inputs[s : s + chunk]) for s in range(0, len(inputs), chunk)]))
    logits_a, logits_b = outputs
    return {
        "cka_logits": linear_cka(logits_a, logits_b),
        "cka_softmax": linear_cka(logits_a.double().softmax(1), logits_b.double().softmax(1)),
    }
