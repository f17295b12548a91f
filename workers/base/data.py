"""Datasets as device-resident tensors, with the sweep's data-quality knobs applied.

Small image datasets fit in memory (CIFAR-10 as float32 is 0.6 GB), so each worker
process loads a dataset once (`load_dataset` is cached; Ray reuses the process across
trials) and every trial slices it on its device. Readers parse the standard on-disk
formats torchvision writes; a missing dataset is downloaded through torchvision once per
node under a file lock, so the archive's integrity check still applies to real data.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from workers.core import safe_pickle
from workers.core.config import Section, option, section
from workers.core.errors import ConfigError
from workers.core.registry import Registry

DATASETS = Registry("dataset")


@section("data")
@dataclass(frozen=True)
class DataConfig(Section):
    unhashed: ClassVar[tuple[str, ...]] = ("data_root",)
    keyed_when_set: ClassVar[tuple[str, ...]] = ("augment_crop", "augment_flip")

    dataset: str = "digits"
    data_root: str = "~/.cache/landscape-sweeps/data"
    label_noise: float = option(0.0, ge=0, lt=1)  # fraction of training labels replaced by another class
    data_fraction: float = option(1.0, gt=0, le=1)  # fraction of the training set used
    data_seed: int = option(0, ge=0, le=2**32 - 1)  # fixes subset and noisy labels; the same for every model seed
    # Training-batch augmentation on the device (workers.training.augment); the taxonomy paper used none.
    augment_crop: int = 0  # random crops of the image zero-padded by this many pixels; 0: off
    augment_flip: bool = False  # random horizontal flips

    def check(self) -> None:
        DATASETS.check(self.dataset, "dataset")
        side = min(DATASETS.meta(self.dataset)["shape"][1:])
        if not 0 <= self.augment_crop < side:
            raise ConfigError("augment_crop", f"must be in [0, {side}) for {self.dataset} "
                                              f"({side}-pixel images), got {self.augment_crop!r}")

    def n_train(self) -> int:
        """Training-set size after the data_fraction subset."""
        return max(1, round(self.data_fraction * DATASETS.meta(self.dataset)["n_train"]))


@dataclass(frozen=True)
class Arrays:
    """Images (N, C, H, W) uint8 or float and integer labels (N,), train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class Splits:
    """Normalised float32 tensors on the training device, ready for batching."""

    x_train: torch.Tensor  # (N, C, H, W)
    y_train: torch.Tensor  # (N,) int64, after label noise
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    n_noisy: int  # labels changed by label_noise


# ---------------------------------------------------------------- readers (on-disk formats)


@DATASETS.register("digits", n_train=1437, n_test=360, shape=(1, 8, 8), classes=10)
def read_digits(root: Path) -> Arrays:
    """scikit-learn's bundled 8x8 digits (1,797 real images); a fixed 80/20 split."""
    images, labels = _bundled_digits()
    x = (images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = labels.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed split, independent of seeds
    test, train = order[:360], order[360:]
    return Arrays(x[train], y[train], x[test], y[test])


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) with values 0-16, labels) from the file scikit-learn ships,
    read without importing `sklearn.datasets`: that import costs about 1.5 s in every new
    worker process, the file 0.1 s. Falls back to `load_digits` if the file moved."""
    package = importlib.util.find_spec("sklearn")
    if package is None:
        raise ImportError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    path = Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",") if path.exists() else None  # 64 pixels, then the label
    if table is None or table.shape != (1797, 65):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1]


def _cifar_batches(folder: Path, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = safe_pickle.load(f, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


@DATASETS.register(
    "cifar10", n_train=50000, n_test=10000, shape=(3, 32, 32), classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),  # the taxonomy paper's
    download=("CIFAR10", "cifar-10-batches-py/test_batch"),
)
def read_cifar10(root: Path) -> Arrays:
    folder = root / "cifar-10-batches-py"
    train = _cifar_batches(folder, [f"data_batch_{i}" for i in range(1, 6)], b"labels")
    test = _cifar_batches(folder, ["test_batch"], b"labels")
    return Arrays(*train, *test)


@DATASETS.register(
    "cifar100", n_train=50000, n_test=10000, shape=(3, 32, 32), classes=100,
    download=("CIFAR100", "cifar-100-python/test"),
)
def read_cifar100(root: Path) -> Arrays:
    folder = root / "cifar-100-python"
    return Arrays(*_cifar_batches(folder, ["train"], b"fine_labels"),
                  *_cifar_batches(folder, ["test"], b"fine_labels"))


@DATASETS.register(
    "svhn", n_train=73257, n_test=26032, shape=(3, 32, 32), classes=10,
    download=("SVHN", "test_32x32.mat"),
)
def read_svhn(root: Path) -> Arrays:
    from scipy.io import loadmat

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(root / f"{name}_32x32.mat")
        x = np.transpose(mat["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
        y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
        return np.ascontiguousarray(x), y

    return Arrays(*split("train"), *split("test"))


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), optionally gzipped."""
    if not path.exists() and path.with_suffix(path.suffix + ".gz").exists():
        path = path.with_suffix(path.suffix + ".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype_code == 0x08, f"{path}: not an unsigned-byte IDX file"
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_like(folder: Path) -> Arrays:
    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = _read_idx(folder / f"{prefix}-images-idx3-ubyte")[:, None]  # (N, 1, 28, 28)
        y = _read_idx(folder / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        return x, y

    return Arrays(*split("train"), *split("t10k"))


@DATASETS.register(
    "mnist", n_train=60000, n_test=10000, shape=(1, 28, 28), classes=10,
    download=("MNIST", "MNIST/raw/t10k-labels-idx1-ubyte"),
)
def read_mnist(root: Path) -> Arrays:
    return _mnist_like(root / "MNIST" / "raw")


@DATASETS.register(
    "fashionmnist", n_train=60000, n_test=10000, shape=(1, 28, 28), classes=10,
    download=("FashionMNIST", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
)
def read_fashionmnist(root: Path) -> Arrays:
    return _mnist_like(root / "FashionMNIST" / "raw")


# ---------------------------------------------------------------- download, cache, knobs


def ensure_downloaded(name: str, root: Path) -> None:
    """Download a torchvision dataset once per node; concurrent trials wait on a lock."""
    spec = DATASETS.meta(name).get("download")
    if spec is None:
        return
    tv_class, marker = spec
    if (root / marker).exists():
        return
    import torchvision
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.download.lock")):
        if (root / marker).exists():  # another trial finished the download meanwhile
            return
        cls = getattr(torchvision.datasets, tv_class)
        for kwargs in ({"split": "train"}, {"split": "test"}) if tv_class == "SVHN" else (
            {"train": True}, {"train": False}
        ):
            cls(str(root), download=True, **kwargs)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, data_root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised float32 CPU tensors (x_train, y_train, x_test, y_test), cached per process.

    Callers must not modify the returned tensors (label noise works on a copy).
    """
    root = Path(os.path.expanduser(data_root))
    ensure_downloaded(name, root)
    arrays = DATASETS.get(name)(root)
    meta = DATASETS.meta(name)
    scale = 255.0 if arrays.x_train.dtype == np.uint8 else 1.0
    x_train = torch.from_numpy(arrays.x_train.astype(np.float32) / scale)
    x_test = torch.from_numpy(arrays.x_test.astype(np.float32) / scale)
    dims = (0, 2, 3)
    mean = torch.tensor(meta["mean"]) if "mean" in meta else x_train.mean(dim=dims)
    std = torch.tensor(meta["std"]) if "std" in meta else x_train.std(dim=dims)
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return (
        (x_train - mean) / std,
        torch.from_numpy(arrays.y_train),
        (x_test - mean) / std,
        torch.from_numpy(arrays.y_test),
    )


def subset_indices(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A deterministic, sorted subset of round(fraction * n) indices."""
    keep = max(1, round(fraction * n))
    return torch.randperm(n, generator=generator)[:keep].sort().values


def noisy_labels(
    y: torch.Tensor, noise: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Copy of `y` with exactly round(noise * n) labels changed to a different class."""
    y = y.clone()
    n_noisy = round(noise * len(y))
    idx = torch.randperm(len(y), generator=generator)[:n_noisy]
    offset = torch.randint(1, num_classes, (n_noisy,), generator=generator)
    y[idx] = (y[idx] + offset) % num_classes
    return y, n_noisy


def prepare(cfg: DataConfig, device: torch.device | str = "cpu") -> Splits:
    """The trial's data: subset, label noise (both fixed by data_seed), on `device`."""
    x_train, y_train, x_test, y_test = load_dataset(cfg.dataset, cfg.data_root)
    num_classes = DATASETS.meta(cfg.dataset)["classes"]
    generator = torch.Generator().manual_seed(cfg.data_seed)
    idx = subset_indices(len(y_train), cfg.data_fraction, generator)
    y_sub, n_noisy = noisy_labels(y_train[idx], cfg.label_noise, num_classes, generator)
    return Splits(
        x_train[idx].to(device),
        y_sub.to(device),
        x_test.to(device),
        y_test.to(device),
        num_classes,
        n_noisy,
    )
