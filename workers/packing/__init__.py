"""Packed training: several same-shaped models trained as one fused network.

Small models (ResNet18 of width k <= 8 on a CPU, more on a GPU) cost per-operation
overhead, not arithmetic: a step of five separate width-4 models takes three times as
long as one step of the five fused. Following HFTA (Wang et al., MLSys 2021), G models
become one network whose convolutions have `groups=G`, whose BatchNorm layers hold G
models' channels side by side (BatchNorm is per channel, so it stays per model) and
whose linear layers are batched matrix products. Every tensor of the packed state is
the G members' tensors concatenated along dim 0, so member g is a slice.

- `modules`: pack models into one network and take member g back out.
- `optim`: SGD, Adam(W) and ALI-G on a packed network, each member with its own
  hyperparameters (ALI-G's step size and norm constraint per member).
- `train`: the packed epoch: every member sees its solo batch order and augmentation.
- `plan`: which trials can share a pack and which packs a sweep runs (`--pack`).
- `job`: the pack job: train the missing members, then write each member's records,
  metrics and seed pairs exactly as a solo trial would.
"""
