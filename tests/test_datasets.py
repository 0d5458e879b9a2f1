"""Tests for funcnet.datasets: IDX files written here, bundled/generated data, CSV."""

import functools
import gzip
import io
import os
import random
import re
import struct
import sys
import tracemalloc

import numpy as np
import pytest

from funcnet import datasets
from funcnet.data import clean
from funcnet.datasets import DatasetError, load_csv, load_fashion_mnist, load_mnist, read_idx

# --------------------------------------------------------------------------- IDX

_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}

# gzip's header holds the time: fixed, so that every pytest-xdist worker builds the same
# parameters (ids) at collection, whenever it runs
_gz = functools.partial(gzip.compress, mtime=0)


def write_idx(path, array, compress=False):
    """An independent IDX writer: magic, big-endian dimensions, big-endian data."""
    array = np.asarray(array)
    code = _TYPE_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        payload = _gz(payload)
    path.write_bytes(payload)
    return path


def write_mnist(folder, n_train=5, n_test=3, size=28, compress=True, sep="-"):
    rng = np.random.default_rng(0)
    gz = ".gz" if compress else ""
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{stem}-images{sep}idx3-ubyte{gz}", images, compress)
        write_idx(folder / f"{stem}-labels{sep}idx1-ubyte{gz}", labels, compress)
        arrays[stem] = (images, labels)
    return arrays


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "a-idx3", array, compress))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
@pytest.mark.parametrize(("compress", "sep"), [(True, "-"), (False, "-"), (False, ".")])
def test_load_mnist_round_trip(tmp_path, loader, compress, sep):
    arrays = write_mnist(tmp_path, compress=compress, sep=sep)
    (x_train, y_train), (x_test, y_test) = loader(tmp_path)
    assert x_train.shape == (5, 28, 28, 1) and x_train.dtype == np.uint8
    assert y_train.shape == (5,) and y_train.dtype == np.int32 and x_test.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(x_train[..., 0], arrays["train"][0])
    np.testing.assert_array_equal(y_test, arrays["t10k"][1])
    (flat, _), _ = loader(str(tmp_path), flatten=True)
    assert flat.shape == (5, 784)
    np.testing.assert_array_equal(flat, arrays["train"][0].reshape(5, -1))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder; pass the folder"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError,
        match=r"no file train-images-idx3-ubyte .*expected the standard files .*"
        r"t10k-labels-idx1-ubyte \(raw or .gz\) from the MNIST distribution.*does not download",
    ):
        load_mnist(tmp_path)
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no file t10k-labels-idx1-ubyte .*Fashion-MNIST"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="read_idx: no such file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")


def _corrupt(tmp_path, name, payload):
    write_mnist(tmp_path, compress=False)
    (tmp_path / name).write_bytes(payload)


def _labels_bytes(labels, count=None):
    count = len(labels) if count is None else count
    return bytes([0, 0, 8, 1]) + struct.pack(">I", count) + bytes(labels)


@pytest.mark.parametrize(
    ("name", "payload", "match"),
    [
        ("train-labels-idx1-ubyte", b"", r"train-labels-idx1-ubyte is not an IDX file.*empty file"),
        (
            "train-labels-idx1-ubyte",
            b"\x00\x00\x07\x01\x00\x00\x00\x01\x05",
            r"is not an IDX file: expected a magic number 0x0000TTDD.*got 00000701",
        ),
        ("train-labels-idx1-ubyte", b"PK\x03\x04garbage", "is not an IDX file"),
        ("t10k-labels-idx1-ubyte", bytes([0, 0, 8, 2, 0, 0]), "is truncated: its header needs 12"),
        (
            "train-labels-idx1-ubyte",
            _labels_bytes([1, 2, 3], count=5),
            r"is corrupt: its header says shape \(5,\) \(5 bytes of data\), but the file holds 3",
        ),
        (
            "t10k-labels-idx1-ubyte",
            _labels_bytes([1, 2, 3]) + b"\x00",
            r"header says shape \(3,\) \(3 bytes of data\), but the file holds 4",
        ),
        (
            "train-images-idx3-ubyte",
            _gz(_labels_bytes([1, 2, 3]))[:-6],
            "starts like a gzip file but cannot be decompressed",
        ),
        (
            "train-images-idx3-ubyte",
            _labels_bytes([1, 2, 3, 4, 5]),
            r"train-images-idx3-ubyte should hold images .*got 1 dimensions of uint8.*swapped",
        ),
        (
            "train-labels-idx1-ubyte",
            _labels_bytes([1, 2, 3, 4]),
            r"the train files disagree: train-images-idx3-ubyte has 5 images, "
            r"train-labels-idx1-ubyte 4 labels",
        ),
        ("train-labels-idx1-ubyte", _labels_bytes([1, 2, 3, 4, 12]), "labels up to 12"),
    ],
)
def test_corrupt_files_are_rejected(tmp_path, name, payload, match):
    _corrupt(tmp_path, name, payload)
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path)


def test_wrong_idx_type_is_rejected(tmp_path):
    write_mnist(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5, dtype=np.int32))
    with pytest.raises(ValueError, match=r"should hold labels \(N,\) \(unsigned bytes"):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- digits, mnist1d


def test_load_digits():
    pytest.importorskip("sklearn")
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert x_train.min() >= 0 and x_train.max() <= 16
    counts = np.bincount(y_test, minlength=10)
    np.testing.assert_array_less(
        np.abs(counts - 0.2 * np.bincount(np.concatenate([y_train, y_test]))), 1.0 + 1e-9
    )
    (flat, flat_y), _ = datasets.load_digits(flatten=True, test_size=100, seed=0)
    assert flat.shape == (1697, 64) and flat_y.shape == (1697,)
    (again, _), _ = datasets.load_digits()
    np.testing.assert_array_equal(again, x_train)


def test_load_mnist1d():
    pytest.importorskip("mnist1d")
    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist1d(channel_axis=True)
    assert random.random() == expected_python and np.random.rand() == expected_numpy
    assert x_train.shape == (4000, 40, 1) and x_test.shape == (1000, 40, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == y_test.dtype == np.int32
    assert sorted(np.unique(y_train).tolist()) == list(range(10))
    assert abs(float(np.concatenate([x_train, x_test]).mean())) < 1e-3


def test_missing_optional_packages(monkeypatch):
    for name in ("mnist1d", "mnist1d.data", "sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ModuleNotFoundError, match=r"needs the `mnist1d` package.*pip install"):
        datasets.load_mnist1d()
    with pytest.raises(ModuleNotFoundError, match=r"load_digits needs scikit-learn.*pip install"):
        datasets.load_digits()


# --------------------------------------------------------------------------- CSV


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_csv_numeric_target_and_missing_values(tmp_path):
    path = _write(tmp_path, "a,b,label\n1,2,0\n3,NA,1\n,inf,1\n4,5,\n")
    x, y, columns = load_csv(path, target="label")
    assert columns == ["a", "b"] and x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x[0], [1, 2])
    assert np.isnan(x[1, 1]) and np.isnan(x[2, 0]) and np.isinf(x[2, 1])
    assert np.isnan(y[3])
    xc, yc, report = clean(x, y, strategy="mean")
    assert report.rows_dropped == 1 and report.values_imputed == 3
    assert np.isfinite(xc).all() and yc.tolist() == [0, 1, 1]


def test_load_csv_target_by_index_without_header(tmp_path):
    path = _write(tmp_path, "0.5;7;2\n1.5;8;3\n")
    x, y, columns = load_csv(path, target=-1, header=False, delimiter=";", dtype=np.float64)
    assert columns == ["0", "1"] and x.dtype == np.float64
    np.testing.assert_array_equal(x, [[0.5, 7.0], [1.5, 8.0]])
    np.testing.assert_array_equal(y, [2, 3])
    x_only, y_none, _ = load_csv(path, header=False, delimiter=";")
    assert x_only.shape == (2, 3) and y_none is None


def test_load_csv_string_target(tmp_path):
    path = _write(tmp_path, 'x,"kind"\n1,"a, b"\n2,c\n')
    _, y, _ = load_csv(path, target="kind")
    assert y.tolist() == ["a, b", "c"]


def test_load_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_csv: no such file"):
        load_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="is empty; expected a header row"):
        load_csv(_write(tmp_path, "", "empty.csv"))
    path = _write(tmp_path, "a,b\n1,2\n3,x\n4,5,6\n")
    with pytest.raises(ValueError, match=r"line 4 has 3 fields, expected 2"):
        load_csv(path)
    path = _write(tmp_path, "a,b\n1,2\n3,x\n")
    with pytest.raises(ValueError, match=r"line 3, column 'b': 'x' is not a number"):
        load_csv(path)
    with pytest.raises(ValueError, match=r"no column named 'c' .*columns: \['a', 'b'\]"):
        load_csv(path, target="c")
    with pytest.raises(ValueError, match=r"no column named 'a'"):
        load_csv(path, target="a", header=False)
    with pytest.raises(
        ValueError, match=r"`target` must be a column name or an index in \[-2, 2\)"
    ):
        load_csv(path, target=2)


def test_mnist1d_hidden_by_a_local_file(tmp_path, monkeypatch):
    (tmp_path / "mnist1d.py").write_text("")  # e.g. a user's script named like the package
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "mnist1d"}
    for name in saved:
        del sys.modules[name]
    try:
        with pytest.raises(ModuleNotFoundError, match="may hide the package: rename it"):
            datasets.load_mnist1d()
    finally:
        for name in [k for k in sys.modules if k.split(".")[0] == "mnist1d"]:
            del sys.modules[name]
        sys.modules.update(saved)


# --------------------------------------------------------------------------- hostile IDX files


def _gzip_zeros(header, zeros, chunk=1 << 20):
    """gzip bytes of ``header`` followed by ``zeros`` zero bytes, compressed chunk by chunk."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as f:
        f.write(header)
        for start in range(0, zeros, chunk):
            f.write(bytes(min(chunk, zeros - start)))
    return out.getvalue()


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_with_trailing_data_stops_at_the_announced_size(tmp_path):
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(_gzip_zeros(_labels_bytes([1, 2, 3]), 64 << 20))  # 64 MiB of zeros
    assert path.stat().st_size < 100_000

    def read():
        with pytest.raises(
            DatasetError,
            match=rf"^read_idx: {re.escape(str(path))} is corrupt: its header says shape \(3,\) "
            r"\(3 bytes of data\), but the file holds more after it; replace it",
        ):
            read_idx(path)

    assert _peak_bytes(read) < 4 << 20


def test_gzip_bomb_announcing_gigabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1 << 20, 32, 32)  # 1 GiB announced
    path.write_bytes(_gzip_zeros(header, 1 << 20))
    size = path.stat().st_size

    def read():
        with pytest.raises(
            DatasetError,
            match=rf"shape \(1048576, 32, 32\) \(1073741824 bytes of data\), but gzip expands "
            rf"its {size} bytes at most 1032-fold; replace it with a fresh copy",
        ):
            read_idx(path)

    assert _peak_bytes(read) < 4 << 20
    header = bytes([0, 0, 8, 1]) + struct.pack(">I", 100)
    path.write_bytes(_gzip_zeros(header, 100))
    with pytest.raises(DatasetError, match=r"more than `max_bytes=50`; if the file is genuine"):
        read_idx(path, max_bytes=50)
    assert read_idx(path, max_bytes=100).shape == (100,)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (
            _gz(bytes([0, 0, 8, 1]) + struct.pack(">I", 1000) + bytes(range(250)) * 2),
            r"header says shape \(1000,\) \(1000 bytes of data\), but the file holds 500 bytes",
        ),
        (_gz(bytes([0, 0, 8, 2, 0, 0, 0])), r"is truncated: its header needs 12 bytes"),
        (_gz(b""), r"is not an IDX file: .*got an empty file"),
        (_gz(bytes([0, 0, 7, 1])), r"is not an IDX file: .*got 00000701"),
        (bytes([0, 0, 8, 40]) + bytes(160), r"announces 40 dimensions, expected at most 32"),
        (_gz(_labels_bytes([1, 2, 3]))[:12], r"starts like a gzip file but cannot be"),
        (_gz(_labels_bytes([1, 2, 3])) + b"junk", r"starts like a gzip file but cannot"),
    ],
)
def test_hostile_idx_headers(tmp_path, payload, match):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=rf"^read_idx: {re.escape(str(path))}.*{match}"):
        read_idx(path)


def test_gzip_crc_is_checked(tmp_path):
    raw = bytearray(_gz(_labels_bytes(list(range(200))), compresslevel=0))
    raw[-20] ^= 1  # a data byte of a stored (uncompressed) block: only the CRC notices
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"cannot be decompressed \(CRC check failed"):
        read_idx(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_idx_and_csv_refuse_a_fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(DatasetError, match=r"read_idx: .*fifo is not a regular file"):
        read_idx(path)
    with pytest.raises(DatasetError, match=r"load_csv: .*fifo is not a regular file"):
        load_csv(path)


# --------------------------------------------------------------------------- hostile CSV files


def test_csv_not_utf8_names_file_line_and_byte(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"a,b\n1,2\n3,caf\xe9\n")
    with pytest.raises(
        DatasetError,
        match=rf"^load_csv: {re.escape(str(path))} line 3, byte 6: b'\\xe9' is not valid "
        r"utf-8-sig \(invalid continuation byte\); pass the file's `encoding`",
    ) as info:
        load_csv(path, target="b")
    assert isinstance(info.value.__cause__, UnicodeDecodeError)
    _, y, _ = load_csv(path, target="b", encoding="latin-1")
    assert y.tolist() == ["2", "café"]


def test_csv_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b\n1,2\n".encode())
    assert load_csv(path).columns == ["a", "b"]


@pytest.mark.parametrize(
    "text", ['a,b\n1,2\n3,"' + "x" * 200_000 + "\n4,5\n", "a,b\n1,2\n3," + "9" * 200_000 + "\n"]
)
def test_csv_over_long_field(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(
        DatasetError,
        match=rf"^load_csv: {re.escape(str(path))} line 3: field larger than field limit "
        r"\(131072\); .*unbalanced quote",
    ):
        load_csv(path)


def test_csv_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    path = _write(tmp_path, 'a,b\n\n1,2\n"3\n",4\n6,' + "y" * 100 + "\n")
    with pytest.raises(
        DatasetError, match=r"line 6, column 'b': 'yyyy.*'\.\.\. \(100 characters\) is not a number"
    ):
        load_csv(path)
