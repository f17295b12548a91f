"""Pack G models of one architecture into one network, and take member g back out.

The packed network is a copy of member 0's module tree whose layers with weights are
replaced by packed layers; the containers' own `forward` code (ResNet blocks, the
residual additions, pooling, flattening) runs unchanged, because every operation in it
is per channel or per element. Activations carry the members side by side along the
channel dimension: (B, G*C, H, W), member g's channels in block g. A flattened
(B, G*C*H*W) activation keeps member g's features in block g as well, so linear layers
work on (B, G*features).

Every tensor of the packed state is the members' tensors concatenated along dim 0
(`weight` of a conv: (G*out, in, k, k); of a linear layer: (G*out, in)), except scalars
such as BatchNorm's `num_batches_tracked`, which the members share. The state dict has
the solo model's keys, so `member_state(packed, g)` loads into a solo model as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn


class PackedLinear(nn.Module):
    """G linear layers side by side: (B, G*in) -> (B, G*out), one batched matmul."""

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool,
                 device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members * out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(members * out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, n_in, n_out = self.members, self.in_features, self.out_features
        x = x.reshape(len(x), g, n_in).transpose(0, 1)  # (G, B, in)
        weight = self.weight.view(g, n_out, n_in).transpose(1, 2)  # (G, in, out)
        if self.bias is None:
            out = torch.bmm(x, weight)
        else:
            out = torch.baddbmm(self.bias.view(g, 1, n_out), x, weight)  # (G, B, out)
        return out.transpose(0, 1).reshape(-1, g * n_out)


def _packed_conv(conv: nn.Conv2d, members: int) -> nn.Conv2d:
    return nn.Conv2d(members * conv.in_channels, members * conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, members * conv.groups, conv.bias is not None,
                     conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)


def _packed_batchnorm(norm: nn.BatchNorm2d, members: int) -> nn.BatchNorm2d:
    like = norm.weight if norm.weight is not None else norm.running_mean
    return nn.BatchNorm2d(members * norm.num_features, norm.eps, norm.momentum, norm.affine,
                          norm.track_running_stats, device=like.device, dtype=like.dtype)


def _packed_linear(linear: nn.Linear, members: int) -> PackedLinear:
    return PackedLinear(members, linear.in_features, linear.out_features, linear.bias is not None,
                        linear.weight.device, linear.weight.dtype)


# Layer type -> builder of its packed version (exact types: a subclass may compute otherwise).
_PACKERS: dict[type, Callable[[nn.Module, int], nn.Module]] = {
    nn.Conv2d: _packed_conv, nn.BatchNorm2d: _packed_batchnorm, nn.Linear: _packed_linear,
}


def unsupported_layers(model: nn.Module) -> list[str]:
    """Layers with weights or buffers that `pack` has no packed version of (empty: the
    model packs). Containers' own forward code is not inspected: it must work per
    channel, which the equivalence test checks for every registered model."""
    return [f"{name or 'model'} ({type(module).__name__})" for name, module in model.named_modules()
            if type(module) not in _PACKERS
            and (any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)))]


def pack(models: Sequence[nn.Module]) -> nn.Module:
    """One network computing all `models` at once; its state is theirs concatenated.

    The members must have the same architecture (same state keys and shapes); each keeps
    its own weights and BatchNorm statistics exactly. Inputs are (B, G*C, H, W), outputs
    (B, G*classes): see `stack_inputs` and `split_outputs`.
    """
    first = models[0]
    bad = unsupported_layers(first)
    assert not bad, f"cannot pack layers {bad}"
    states = [m.state_dict() for m in models]
    for state in states[1:]:
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in states[0].items()}, \
            "packed models must share their architecture"
    packed = copy.deepcopy(first)
    for name, module in list(packed.named_modules()):
        builder = _PACKERS.get(type(module))
        if builder is not None:
            _replace(packed, name, builder(module, len(models)))
    packed.load_state_dict({key: _concat([s[key] for s in states]) for key in states[0]})
    packed.train(first.training)
    return packed


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    if tensors[0].dim() == 0:  # shared by all members (num_batches_tracked)
        assert all(torch.equal(t, tensors[0]) for t in tensors), "members disagree on a shared scalar"
        return tensors[0].clone()
    return torch.cat(tensors, dim=0)


def member_state(packed: nn.Module, member: int, members: int) -> dict[str, torch.Tensor]:
    """Member `member`'s state dict (solo keys and shapes, its own copies)."""
    return {key: member_slice(value, member, members).clone() for key, value in packed.state_dict().items()}


def member_slice(tensor: torch.Tensor, member: int, members: int) -> torch.Tensor:
    """The view of a packed tensor that belongs to one member (scalars are shared)."""
    return tensor if tensor.dim() == 0 else tensor.unflatten(0, (members, -1))[member]


def stack_inputs(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """G batches (B, C, ...) -> one packed batch (B, G*C, ...), member g's channels in block g."""
    return torch.stack(list(batches), dim=1).flatten(1, 2)


def split_outputs(logits: torch.Tensor, members: int) -> torch.Tensor:
    """Packed output (B, G*classes) -> (B, G, classes)."""
    return logits.unflatten(1, (members, -1))
