"""Datasets from local sources only: funcnet never downloads anything.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (needs scikit-learn).
- :func:`load_mnist1d`: MNIST-1D generated locally by the ``mnist1d`` package
  (needs ``mnist1d``), with the published default arguments.
- :func:`load_mnist`, :func:`load_fashion_mnist`: the standard IDX files in a
  folder you provide (:func:`read_idx` reads one file).
- :func:`load_csv`: numeric tabular data; clean it with :func:`funcnet.data.clean`.

The image loaders return numpy arrays ``(x_train, y_train), (x_test, y_test)``
with labels as int32 class indices and images channels-last ``(N, H, W, C)``
(``flatten=True`` gives ``(N, H * W)``).

Examples:
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_train.dtype, y_train.shape, y_train.dtype, x_test.shape
    ((1438, 8, 8, 1), dtype('float32'), (1438,), dtype('int32'), (359, 8, 8, 1))
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import os
import random
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from funcnet._checks import is_int
from funcnet.data import train_val_test_split

__all__ = [
    "load_digits",
    "load_mnist1d",
    "load_mnist",
    "load_fashion_mnist",
    "read_idx",
    "Table",
    "load_csv",
]

_EXTRA_HINT = "install it with `pip install 'funcnet[datasets]'`"


def _finish_images(x: np.ndarray, flatten: bool) -> np.ndarray:
    return x.reshape(len(x), -1) if flatten else x[..., None]


# --------------------------------------------------------------------------- bundled / generated


def load_digits(
    *, test_size: float | int = 0.2, seed: int = 0, flatten: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 handwritten 8x8 digits, split into train and test.

    The data ships with scikit-learn (no network). The split is stratified by
    class, drawn with ``seed`` (see :func:`funcnet.data.train_val_test_split`).

    Args:
        test_size: fraction (float) or count (int) of test examples.
        seed: an int seeding the split.
        flatten: return ``x`` as ``(N, 64)`` instead of ``(N, 8, 8, 1)``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x`` float32 ``(N, 8, 8, 1)``
        with pixel values 0..16 (as in scikit-learn; standardize them), ``y``
        int32 ``(N,)`` with classes 0..9. With the default ``test_size`` 1438
        train and 359 test examples.

    Raises:
        ModuleNotFoundError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"load_digits needs scikit-learn, which is not installed; {_EXTRA_HINT} "
            "or `pip install scikit-learn`."
        ) from err
    bunch = sklearn_digits()
    x = bunch.images.astype(np.float32)
    y = bunch.target.astype(np.int32)
    train, _, test = train_val_test_split(
        (x, y), val_size=0, test_size=test_size, seed=seed, stratify=y
    )
    x_train, x_test = _finish_images(train[0], flatten), _finish_images(test[0], flatten)
    return (x_train, train[1]), (x_test, test[1])


def _shadowed(package: str) -> bool:
    """True when ``import package`` finds a plain module (e.g. a script ``mnist1d.py``)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[package] is None
        return False
    return spec is not None and spec.submodule_search_locations is None


def load_mnist1d(
    *, channel_axis: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST-1D (Greydanus & Kobak, 2024), generated locally with its default arguments.

    Calls the ``mnist1d`` package's generator
    ``make_dataset(get_dataset_args())`` (seed 42; about 2 s), never its
    downloading ``get_dataset``. The generator reseeds Python's and numpy's
    global random state; this function restores both afterwards.

    Args:
        channel_axis: return ``x`` as ``(N, 40, 1)`` (channels-last, for 1-D
            convolutions and recurrent layers) instead of ``(N, 40)``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: 4000 train and 1000 test
        sequences of length 40, ``x`` float32 (standardized by the generator),
        ``y`` int32 classes 0..9.

    Raises:
        ModuleNotFoundError: if ``mnist1d`` is not installed.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError as err:
        if _shadowed("mnist1d"):
            raise ModuleNotFoundError(
                f"load_mnist1d could not import `mnist1d.data` ({err}); a file or folder named "
                "`mnist1d` on sys.path (such as a script `mnist1d.py` in the working directory) "
                "may hide the package: rename it."
            ) from err
        raise ModuleNotFoundError(
            f"load_mnist1d needs the `mnist1d` package, which is not installed; {_EXTRA_HINT} "
            "or `pip install mnist1d`."
        ) from err
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    def prepare(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float32)
        return (x[..., None] if channel_axis else x), np.asarray(y, np.int32)

    return prepare(data["x"], data["y"]), prepare(data["x_test"], data["y_test"])


# --------------------------------------------------------------------------- IDX files

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"read_idx: no such file: {path}") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as err:
            raise ValueError(
                f"read_idx: {path} starts like a gzip file but cannot be decompressed ({err}); "
                "the file is probably truncated or corrupt: replace it with a fresh copy."
            ) from err
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array, validating it.

    The IDX format (used by MNIST and Fashion-MNIST): two zero bytes, a type
    byte (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of
    dimensions, one big-endian uint32 per dimension, then the data. gzip is
    recognized by its content, not the file name.

    Returns:
        An array of the stored shape, in native byte order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a corrupt file: bad magic number or type, or a data
            size that does not match the header. The message names the file.

    Examples:
        >>> import tempfile, os, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"read_idx: {path} is not an IDX file: expected a magic number 0x0000TTDD "
            f"(TT a type in {[hex(t) for t in _IDX_TYPES]}, DD the number of dimensions), "
            f"got {raw[:4].hex() or 'an empty file'}; replace it with the original file."
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"read_idx: {path} is truncated: its header needs {header} bytes for {ndim} "
            f"dimensions, the file has {len(raw)}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"read_idx: {path} is corrupt: its header says shape {shape} ({expected} bytes of "
            f"data), but the file holds {len(raw) - header} bytes after the header; replace it "
            "with a fresh copy."
        )
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


_IDX_STEMS = {
    "train": ("train-images", "train-labels"),
    "test": ("t10k-images", "t10k-labels"),
}
_SOURCES = {
    "load_mnist": "the MNIST distribution (http://yann.lecun.com/exdb/mnist/ or a mirror)",
    "load_fashion_mnist": (
        "the Fashion-MNIST distribution (https://github.com/zalandoresearch/fashion-mnist, "
        "folder data/fashion)"
    ),
}


def _find_idx(folder: Path, stem: str, dims: int, where: str) -> Path:
    names = [f"{stem}{sep}idx{dims}-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{where}: no file {names[0]} (or {names[1]}) in {folder}; expected the standard files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        f"t10k-labels-idx1-ubyte (raw or .gz) from {_SOURCES[where]}, placed in that folder "
        "by you: funcnet does not download them."
    )


def _check_idx(array: np.ndarray, path: Path, ndim: int, what: str, where: str) -> None:
    if array.dtype != np.uint8 or array.ndim != ndim:
        raise ValueError(
            f"{where}: {path} should hold {what} (unsigned bytes, magic number "
            f"0x0000080{ndim}), got {array.ndim} dimensions of {array.dtype}; the images and "
            "labels files may be swapped or from another dataset."
        )


def _load_idx_pair(
    path: str | os.PathLike, flatten: bool, where: str
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{where}: {folder} is not a folder; pass the folder that holds the IDX files "
            f"(train-images-idx3-ubyte.gz, ...) from {_SOURCES[where]}."
        )
    splits = []
    for split, (image_stem, label_stem) in _IDX_STEMS.items():
        image_path = _find_idx(folder, image_stem, 3, where)
        label_path = _find_idx(folder, label_stem, 1, where)
        images, labels = read_idx(image_path), read_idx(label_path)
        _check_idx(images, image_path, 3, "images (N, rows, cols)", where)
        _check_idx(labels, label_path, 1, "labels (N,)", where)
        if len(images) != len(labels):
            raise ValueError(
                f"{where}: the {split} files disagree: {image_path.name} has {len(images)} "
                f"images, {label_path.name} {len(labels)} labels; replace them with a matching "
                "pair."
            )
        if labels.size and labels.max() > 9:
            raise ValueError(
                f"{where}: {label_path} holds labels up to {labels.max()}, expected classes "
                "0..9; replace it with the original file."
            )
        splits.append((_finish_images(images, flatten), labels.astype(np.int32)))
    return splits[0], splits[1]


def load_mnist(
    path: str | os.PathLike, *, flatten: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST handwritten digits from the four standard IDX files in the folder ``path``.

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or
    ``.gz``; ``.idx3-ubyte`` spellings also work) from the MNIST
    distribution, placed there by you: nothing is downloaded. Every file is
    validated (magic number, dimensions, size, matching counts).

    Args:
        path: the folder with the files.
        flatten: return images as ``(N, 784)`` instead of ``(N, 28, 28, 1)``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: images uint8 ``(N, 28, 28, 1)``
        with pixels 0..255 as stored (e.g. ``Standardizer.fit(x_train, axis=(0, 1, 2))``
        turns them into float32), labels int32 ``(N,)`` 0..9; 60000 train and
        10000 test examples.

    Raises:
        FileNotFoundError: if the folder or a file is missing (the message
            lists the expected files and where they come from).
        ValueError: if a file is corrupt or the files do not match.
    """
    return _load_idx_pair(path, flatten, "load_mnist")


def load_fashion_mnist(
    path: str | os.PathLike, *, flatten: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST from the four standard IDX files in the folder ``path``.

    Same files, format, shapes and errors as :func:`load_mnist`, from the
    Fashion-MNIST distribution. Classes 0..9: T-shirt/top, trouser, pullover,
    dress, coat, sandal, shirt, sneaker, bag, ankle boot.
    """
    return _load_idx_pair(path, flatten, "load_fashion_mnist")


# --------------------------------------------------------------------------- CSV

_MISSING = {"", "na", "n/a", "nan", "null", "none", "?", "-"}


class Table(NamedTuple):
    """What :func:`load_csv` returns: ``x, y, columns = load_csv(...)``.

    Attributes:
        x: the feature columns, ``(N, F)``.
        y: the target column ``(N,)``: float32 if all its values are numeric,
            else the strings as read (encode them with
            :func:`funcnet.data.encode_labels`); ``None`` without a target.
        columns: the names of the ``F`` feature columns.
    """

    x: np.ndarray
    y: np.ndarray | None
    columns: list[str]


def _to_float(text: str) -> float:
    text = text.strip()
    if text.lower() in _MISSING:
        return math.nan
    return float(text)


def load_csv(
    path: str | os.PathLike,
    target: str | int | None = None,
    *,
    delimiter: str = ",",
    header: bool = True,
    dtype: Any = np.float32,
) -> Table:
    """Read a CSV file of numeric feature columns and an optional target column.

    Missing values (an empty field, ``NA``, ``N/A``, ``nan``, ``null``,
    ``none``, ``?`` or ``-``, any case) become NaN, so they can be dropped or
    imputed with :func:`funcnet.data.clean`; ``inf`` is read as infinity.

    Args:
        path: the CSV file.
        target: the target column, by name (needs ``header``) or index
            (negative counts from the end); ``None`` for features only.
        delimiter: the field separator.
        header: whether the first row holds column names (else they are "0", "1", ...).
        dtype: the dtype of ``x``.

    Returns:
        A :class:`Table` ``(x, y, columns)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown target, a row with the wrong number of
            fields, or a feature value that is not a number (naming line and column).

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "flowers.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("length,width,species\\n5.1,3.5,setosa\\n6.2,NA,virginica\\n")
        >>> x, y, columns = load_csv(path, target="species")
        >>> x
        array([[5.1, 3.5], [6.2, nan]], dtype=float32)
        >>> y, columns
        (array(['setosa', 'virginica'], dtype='<U9'), ['length', 'width'])
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"load_csv: no such file: {path}") from err
    first_line = 1
    if header:
        if not rows:
            raise ValueError(f"load_csv: {path} is empty; expected a header row of column names.")
        names, rows, first_line = [n.strip() for n in rows[0]], rows[1:], 2
    else:
        names = [str(i) for i in range(len(rows[0]) if rows else 0)]
    width = len(names)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(
                f"load_csv: {path} line {i + first_line} has {len(row)} fields, expected "
                f"{width} like the first row; check the `delimiter` ({delimiter!r}) and quoting."
            )
    if target is None:
        target_index = None
    elif isinstance(target, str):
        if not header or target not in names:
            raise ValueError(
                f"load_csv: no column named {target!r} in {path} (columns: {names}); pass one "
                "of them, or an index, as `target`."
            )
        target_index = names.index(target)
    elif is_int(target) and -width <= target < width:
        target_index = int(target) % width
    else:
        raise ValueError(
            f"load_csv: `target` must be a column name or an index in [-{width}, {width}), "
            f"got {target!r}."
        )
    features = [j for j in range(width) if j != target_index]
    x = np.empty((len(rows), len(features)), np.float64)
    for i, row in enumerate(rows):
        for col, j in enumerate(features):
            try:
                x[i, col] = _to_float(row[j])
            except ValueError:
                raise ValueError(
                    f"load_csv: {path} line {i + first_line}, column {names[j]!r}: {row[j]!r} "
                    "is not a number; load_csv reads numeric features only: encode this "
                    "column first, or make it the `target`."
                ) from None
    y = None
    if target_index is not None:
        column = [row[target_index].strip() for row in rows]
        try:
            y = np.array([_to_float(v) for v in column], np.float32)
        except ValueError:
            y = np.array(column)
    return Table(x.astype(dtype), y, [names[j] for j in features])
