"""Datasets: digits, the on-disk readers of torchvision formats, label noise, subsets."""

from __future__ import annotations

import gzip
import operator
import pickle
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from workers.base.data import (
    DATASETS,
    DataConfig,
    _bundled_digits,
    load_dataset,
    noisy_labels,
    prepare,
    subset_indices,
)


def test_digits_split_sizes_match_the_registry():
    x_train, y_train, x_test, y_test = load_dataset("digits", "unused")
    meta = DATASETS.meta("digits")
    assert x_train.shape == (meta["n_train"], 1, 8, 8) and x_test.shape == (meta["n_test"], 1, 8, 8)
    assert set(y_train.tolist()) == set(range(10))
    assert abs(float(x_train.mean())) < 1e-4  # normalised with training statistics


def test_digits_are_read_from_scikit_learns_file_without_importing_sklearn_datasets():
    from sklearn.datasets import load_digits

    images, labels = _bundled_digits()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    code = ("import sys; from workers.base.data import load_dataset; load_dataset('digits', '~/unused'); "
            "assert 'sklearn.datasets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.25, 0.5])
def test_label_noise_changes_exactly_round_noise_n_labels(noise):
    y = torch.arange(1000) % 10
    noisy, n = noisy_labels(y, noise, 10, torch.Generator().manual_seed(3))
    assert n == round(noise * 1000)
    assert int((noisy != y).sum()) == n  # every chosen label moves to a different class
    assert noisy.min() >= 0 and noisy.max() < 10
    again, _ = noisy_labels(y, noise, 10, torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)


@pytest.mark.parametrize("fraction", [0.1, 0.33, 1.0])
def test_subset_is_deterministic_sorted_and_sized(fraction):
    idx = subset_indices(1437, fraction, torch.Generator().manual_seed(0))
    assert len(idx) == round(fraction * 1437)
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == len(idx)
    assert torch.equal(idx, subset_indices(1437, fraction, torch.Generator().manual_seed(0)))


def test_prepare_applies_fraction_and_noise_with_the_data_seed():
    cfg = DataConfig(dataset="digits", label_noise=0.2, data_fraction=0.5, data_seed=7)
    a, b = prepare(cfg), prepare(cfg)
    assert len(a.y_train) == round(0.5 * 1437) and a.n_noisy == round(0.2 * len(a.y_train))
    assert torch.equal(a.y_train, b.y_train)
    clean = prepare(DataConfig(dataset="digits", data_fraction=0.5, data_seed=7))
    assert int((clean.y_train != a.y_train).sum()) == a.n_noisy
    assert len(a.y_test) == 360  # the test set is never subset or noised


def _write_cifar_batch(path, n, seed, label_key=b"labels"):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: rng.integers(0, 10, n).tolist()}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return batch


def test_cifar10_reader_parses_the_python_batch_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_write_cifar_batch(folder / f"data_batch_{i}", 4, i) for i in range(1, 6)]
    test = _write_cifar_batch(folder / "test_batch", 3, 9)
    arrays = DATASETS.get("cifar10")(tmp_path)
    assert arrays.x_train.shape == (20, 3, 32, 32) and arrays.x_test.shape == (3, 3, 32, 32)
    assert np.array_equal(arrays.x_train[0].reshape(-1), batches[0][b"data"][0])
    assert arrays.y_test.tolist() == test[b"labels"]


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_reader_parses_gzipped_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(raw / "train-images-idx3-ubyte.gz", images)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.array([3, 7]))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", images[:1])
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.array([5]))
    arrays = DATASETS.get("mnist")(tmp_path)
    assert arrays.x_train.shape == (2, 1, 28, 28) and arrays.y_train.tolist() == [3, 7]
    assert np.array_equal(arrays.x_train[1, 0], images[1])


def test_svhn_reader_moves_label_10_to_0(tmp_path):
    from scipy.io import savemat

    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10]])})
    arrays = DATASETS.get("svhn")(tmp_path)
    assert arrays.x_train.shape == (4, 3, 32, 32) and arrays.y_train.tolist() == [0, 1, 2, 0]
    assert np.array_equal(arrays.x_train[0, :, 5, 7], x[5, 7, :, 0])


def test_a_pickle_that_runs_code_is_refused(tmp_path, figures):
    from workers.core.safe_pickle import UnsafePickleError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Exploit:  # any callable will do; not `print`, which Ray replaces once imported
        def __reduce__(self):
            return (operator.add, (1, 2))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}))
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 2, i)
    with pytest.raises(UnsafePickleError, match=r"operator\.add|_operator\.add") as info:
        DATASETS.get("cifar10")(tmp_path)
    refused = re.search(r"refusing to load ([\w.]+)", str(info.value))[1]
    figures("untrusted", "a CIFAR batch calling `{refused}` refused", refused=refused)
