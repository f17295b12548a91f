"""Data augmentation of training batches, on the batch's own device.

The standard CIFAR recipe (random crops of the zero-padded image, random horizontal
flips; used by the SWA and late-phase papers) done on whole batches with tensor indexing,
so a dataset held on the GPU never goes back to the host and no DataLoader workers are
needed. The taxonomy paper trained without augmentation, which stays the default.

The random offsets and flips come from the epoch's CPU generator (the one that ordered
the batches), so a trial resumed at epoch e sees exactly the augmented batches it would
have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn import functional as F


class AugmentSettings(Protocol):
    """The fields of the `data` section (`workers.base.data.DataConfig`) read here."""

    augment_crop: int
    augment_flip: bool


@dataclass(frozen=True)
class Augment:
    crop: int = 0  # zero padding in pixels on each side before a random crop; 0: no crops
    flip: bool = False  # mirror each image left-right with probability 1/2

    @classmethod
    def of(cls, data: AugmentSettings) -> Augment:
        return cls(data.augment_crop, data.augment_flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new (N, C, H, W) batch: each image shifted by its own random offset (the
        uncovered border is zero) and possibly mirrored, in `x`'s memory layout."""
        out = x
        if self.crop:
            out = self._random_crops(out, generator)
        if self.flip:
            flipped = torch.randint(0, 2, (len(x),), generator=generator).bool().to(x.device)
            out = torch.where(flipped.view(-1, 1, 1, 1), out.flip(3), out)
        return out if out.stride() == x.stride() else self._in_layout_of(x, out)

    @staticmethod
    def _in_layout_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` copied into `x`'s strides (default or channels_last, workers.training.fast_path).
        The crops' gather and `torch.where` leave strides of their own; with one channel
        those count as contiguous, and oneDNN's convolution backward (torch 2.14.1, CPU)
        then corrupts memory and crashes the process."""
        return torch.empty_like(x).copy_(out)

    def _random_crops(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        offsets = torch.randint(0, 2 * self.crop + 1, (n, 2), generator=generator).to(x.device)
        padded = F.pad(x, (self.crop,) * 4)  # (N, C, H + 2p, W + 2p)
        rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
        cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
        images = torch.arange(n, device=x.device)[:, None, None]
        # one gather for the whole batch in (N, H, W, C), viewed back as (N, C, H, W)
        return padded.permute(0, 2, 3, 1)[images, rows, cols].permute(0, 3, 1, 2)


NONE = Augment()
