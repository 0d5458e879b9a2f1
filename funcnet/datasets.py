"""Datasets from local sources only: funcnet never downloads anything.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (needs scikit-learn).
- :func:`load_mnist1d`: MNIST-1D generated locally by the ``mnist1d`` package
  (needs ``mnist1d``), with the published default arguments.
- :func:`load_mnist`, :func:`load_fashion_mnist`: the standard IDX files in a
  folder you provide (:func:`read_idx` reads one file).
- :func:`load_csv`: numeric tabular data; clean it with :func:`funcnet.data.clean`.

A malformed file raises :class:`DatasetError` (a ``ValueError``) naming it.

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
import io
import math
import os
import random
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from funcnet._checks import is_int
from funcnet.core import FuncnetError
from funcnet.data import train_val_test_split

__all__ = [
    "load_digits",
    "load_mnist1d",
    "load_mnist",
    "load_fashion_mnist",
    "read_idx",
    "DatasetError",
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
_MAX_NDIM = 32  # numpy's limit before 2.0
_DEFLATE_MAX_RATIO = 1032  # deflate expands one byte to at most 1032 (RFC 1951 block limits)
_CHUNK = 1 << 20


class DatasetError(FuncnetError, ValueError):
    """A data file is malformed (bad header, wrong size, undecodable text); the message names it.

    A :class:`~funcnet.core.FuncnetError` and a ``ValueError``.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(b"PK")
        >>> read_idx(path)
        Traceback (most recent call last):
        ...
        funcnet.datasets.DatasetError: read_idx: ... is not an IDX file: ...
    """


def _open_regular(path: Path, where: str):
    """Open ``path`` for reading in binary, refusing FIFOs, sockets and devices (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: no such file: {path}") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DatasetError(
            f"{where}: {path} is not a regular file (a FIFO, socket, device or folder); pass "
            "the path of the data file itself."
        )
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _read_exactly(stream, size: int) -> bytearray:
    """``size`` bytes from ``stream`` (in chunks, so a short file allocates no more than it has)."""
    out = bytearray()
    while len(out) < size:
        chunk = stream.read(min(_CHUNK, size - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _idx_header(stream, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Read and validate the magic number and dimensions, leaving ``stream`` at the data."""
    magic = bytes(_read_exactly(stream, 4))
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
        raise DatasetError(
            f"read_idx: {path} is not an IDX file: expected a magic number 0x0000TTDD "
            f"(TT a type in {[hex(t) for t in _IDX_TYPES]}, DD the number of dimensions), "
            f"got {magic.hex() or 'an empty file'}; replace it with the original file."
        )
    dtype, ndim = np.dtype(_IDX_TYPES[magic[2]]), magic[3]
    if ndim > _MAX_NDIM:
        raise DatasetError(
            f"read_idx: {path} is corrupt: its header announces {ndim} dimensions, expected at "
            f"most {_MAX_NDIM}; replace it with a fresh copy."
        )
    dims = bytes(_read_exactly(stream, 4 * ndim))
    if len(dims) < 4 * ndim:
        raise DatasetError(
            f"read_idx: {path} is truncated: its header needs {4 + 4 * ndim} bytes for {ndim} "
            f"dimensions, the file has {4 + len(dims)}."
        )
    return dtype, struct.unpack(f">{ndim}I", dims)


def _idx_data(stream, path: Path, shape, dtype, file_size, compressed, max_bytes) -> bytearray:
    """Exactly the data the header announces, refusing sizes the file cannot hold up front."""
    expected = math.prod(shape) * dtype.itemsize
    after_header = file_size - 4 - 4 * len(shape)
    said = f"read_idx: {path} is corrupt: its header says shape {shape} ({expected} bytes of data)"
    fix = "replace it with a fresh copy."
    if expected > max_bytes:
        raise DatasetError(
            f"{said}, more than `max_bytes={max_bytes}`; if the file is genuine pass a larger "
            f"`max_bytes`, else {fix}"
        )
    if not compressed and after_header != expected:
        raise DatasetError(f"{said}, but the file holds {after_header} bytes after it; {fix}")
    if compressed and expected > _DEFLATE_MAX_RATIO * file_size:
        raise DatasetError(
            f"{said}, but gzip expands its {file_size} bytes at most {_DEFLATE_MAX_RATIO}-fold; "
            f"{fix}"
        )
    data = _read_exactly(stream, expected)
    if len(data) < expected:
        raise DatasetError(f"{said}, but the file holds {len(data)} bytes after it; {fix}")
    if stream.read(1):  # for gzip, this also checks the CRC at the end of the stream
        raise DatasetError(f"{said}, but the file holds more after it; {fix}")
    return data


def read_idx(path: str | os.PathLike, *, max_bytes: int = 1 << 32) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array, validating it.

    The IDX format (used by MNIST and Fashion-MNIST): two zero bytes, a type
    byte (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of
    dimensions, one big-endian uint32 per dimension, then the data. gzip is
    recognized by its content, not the file name. The header is read and
    checked first; a gzip file is decompressed as it is read, only up to the
    size the header announces (so a small file that expands to gigabytes is
    refused without allocating them).

    Args:
        path: the file.
        max_bytes: the largest data size accepted (default 4 GiB).

    Returns:
        An array of the stored shape, in native byte order.

    Raises:
        FileNotFoundError: if the file does not exist.
        DatasetError: (a ``ValueError``) for a corrupt file: bad magic number
            or type, a truncated header, data shorter or longer than the header
            announces, a damaged gzip stream, or not a regular file. The message
            names the file.

    Examples:
        >>> import tempfile, os, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    with _open_regular(path, "read_idx") as f:
        file_size = os.fstat(f.fileno()).st_size
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
        try:
            dtype, shape = _idx_header(stream, path)
            data = _idx_data(stream, path, shape, dtype, file_size, compressed, max_bytes)
        except (OSError, EOFError, zlib.error) as err:
            if not compressed:
                raise
            raise DatasetError(
                f"read_idx: {path} starts like a gzip file but cannot be decompressed ({err}); "
                "the file is probably truncated or corrupt: replace it with a fresh copy."
            ) from err
    array = np.frombuffer(data, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


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
        raise DatasetError(
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
            raise DatasetError(
                f"{where}: the {split} files disagree: {image_path.name} has {len(images)} "
                f"images, {label_path.name} {len(labels)} labels; replace them with a matching "
                "pair."
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(
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
        DatasetError: (a ``ValueError``) if a file is corrupt or the files do not match.
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


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _read_rows(f, path: Path, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """The non-empty rows and the line each starts on."""
    reader = csv.reader(f, delimiter=delimiter)
    rows, lines = [], []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return rows, lines
        except csv.Error as err:
            raise DatasetError(
                f"load_csv: {path} line {line}: {err}; a field this long or malformed usually "
                'comes from an unbalanced quote (`"`) or a binary file: check the quoting, the '
                f"`delimiter` ({delimiter!r}) and that the file is CSV text."
            ) from err
        if row:
            rows.append(row)
            lines.append(line)


def _decode_error(path: Path, encoding: str) -> DatasetError:
    """Where the file stops being ``encoding``: line and byte, read again as bytes."""
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        bad = raw[err.start : err.end]
        return DatasetError(
            f"load_csv: {path} line {line}, byte {column}: {bad!r} is not valid {encoding} "
            f'({err.reason}); pass the file\'s `encoding` (e.g. `encoding="latin-1"`) or save '
            "it as UTF-8."
        )
    return DatasetError(f"load_csv: {path} is not valid {encoding}; pass the file's `encoding`.")


def _target_index(target, names: list[str], header: bool, path: Path) -> int | None:
    width = len(names)
    if target is None:
        return None
    if isinstance(target, str):
        if not header or target not in names:
            raise ValueError(
                f"load_csv: no column named {target!r} in {path} (columns: {names}); pass one "
                "of them, or an index, as `target`."
            )
        return names.index(target)
    if is_int(target) and -width <= target < width:
        return int(target) % width
    raise ValueError(
        f"load_csv: `target` must be a column name or an index in [-{width}, {width}), "
        f"got {target!r}."
    )


def load_csv(
    path: str | os.PathLike,
    target: str | int | None = None,
    *,
    delimiter: str = ",",
    header: bool = True,
    dtype: Any = np.float32,
    encoding: str = "utf-8-sig",
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
        encoding: the text encoding (default UTF-8, with or without a byte-order mark).

    Returns:
        A :class:`Table` ``(x, y, columns)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        DatasetError: (a ``ValueError``) for bytes that are not valid
            ``encoding``, a malformed or over-long field (e.g. an unbalanced
            quote), a row with the wrong number of fields, or a feature value
            that is not a number; the message names the file and line.
        ValueError: for an unknown ``target``.

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
        with io.TextIOWrapper(_open_regular(path, "load_csv"), encoding, newline="") as f:
            rows, lines = _read_rows(f, path, delimiter)
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding) from err
    if header:
        if not rows:
            raise DatasetError(f"load_csv: {path} is empty; expected a header row of column names.")
        names, rows, lines = [n.strip() for n in rows[0]], rows[1:], lines[1:]
    else:
        names = [str(i) for i in range(len(rows[0]) if rows else 0)]
    for row, line in zip(rows, lines):
        if len(row) != len(names):
            raise DatasetError(
                f"load_csv: {path} line {line} has {len(row)} fields, expected "
                f"{len(names)} like the first row; check the `delimiter` ({delimiter!r}) and "
                "quoting."
            )
    target_index = _target_index(target, names, header, path)
    features = [j for j in range(len(names)) if j != target_index]
    x = np.empty((len(rows), len(features)), np.float64)
    for i, (row, line) in enumerate(zip(rows, lines)):
        for col, j in enumerate(features):
            try:
                x[i, col] = _to_float(row[j])
            except ValueError:
                raise DatasetError(
                    f"load_csv: {path} line {line}, column {names[j]!r}: {_short(row[j])} "
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
