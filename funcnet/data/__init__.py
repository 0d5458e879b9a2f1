"""Data preparation: cleaning, encoding, normalizing, splitting and batching.

Everything here is a plain function or a NamedTuple. The host-side steps
(cleaning, label encoding, fitting a normalizer, splitting) take and return
numpy arrays; what runs per batch (``Standardizer.apply``, ``one_hot`` on jax
arrays, the augmentations in :mod:`funcnet.augment`) also runs inside
``jax.jit``. Normalizers are pytrees, so they are saved with a checkpoint and
passed to a jitted step like any other argument. Nothing keeps hidden state.

The steps, in order: load (:mod:`funcnet.datasets`), look at the data with
:func:`describe` (missing values, outliers, ranges, class balance),
:func:`clean` rows with NaN/Inf, :func:`drop_duplicates`,
:func:`encode_labels` string classes, :func:`train_val_test_split` (or
:func:`k_fold`), fit an :class:`OutlierClipper`, :class:`ConstantColumns` and
a :class:`Standardizer` or :class:`MinMaxScaler` on the training split only
and apply them to every split, augment training batches only, and iterate
with :func:`batches` (optionally through :func:`prefetch_to_device`).

Examples:
    A complete pipeline on scikit-learn's digits (needs scikit-learn):

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from funcnet import augment, data, datasets
    >>> (x, y), (x_test, y_test) = datasets.load_digits()  # x: (N, 8, 8, 1) float32
    >>> train, val, _ = data.train_val_test_split(
    ...     (x, y), val_size=0.1, test_size=0, seed=0, stratify=y
    ... )
    >>> (x_train, y_train), (x_val, y_val) = train, val
    >>> x_train.shape, x_val.shape, x_test.shape
    ((1294, 8, 8, 1), (144, 8, 8, 1), (359, 8, 8, 1))

    Fit the normalizer on the training split only, per channel, and apply it
    to every split:

    >>> norm = data.Standardizer.fit(x_train, axis=(0, 1, 2))
    >>> x_train, x_val, x_test = (norm.apply(a) for a in (x_train, x_val, x_test))
    >>> round(float(x_train.mean()), 4), round(float(x_train.std()), 4)
    (0.0, 1.0)

    Augmentation is a pure function of ``(key, batch)``, used in training only:

    >>> aug = jax.jit(augment.compose(
    ...     augment.random_translation(1), augment.random_rotation(10.0),
    ...     augment.gaussian_noise(0.05),
    ... ))
    >>> key = jax.random.key(0)
    >>> for epoch in range(2):
    ...     key, shuffle_key = jax.random.split(key)
    ...     for step, (xb, yb) in enumerate(data.batches(
    ...         (x_train, y_train), 128, key=shuffle_key, shuffle=True, drop_remainder=True
    ...     )):
    ...         xb = aug(jax.random.fold_in(shuffle_key, step), xb)
    ...         yb = data.one_hot(yb, 10)
    ...         # state, logs = train_step(state, (xb, yb))
    >>> step + 1, xb.shape, xb.dtype, yb.shape
    (10, (128, 8, 8, 1), dtype('float32'), (128, 10))

    Validation batches are neither shuffled nor augmented, and keep the remainder:

    >>> [xb.shape[0] for xb, yb in data.batches((x_val, y_val), 64)]
    [64, 64, 16]
"""

from funcnet.data.batching import batches, prefetch_to_device
from funcnet.data.clean import CleanReport, clean, decode_labels, encode_labels, one_hot
from funcnet.data.describe import Description, describe
from funcnet.data.grain import GrainBatches, from_grain
from funcnet.data.normalize import MinMaxScaler, Standardizer
from funcnet.data.outliers import ConstantColumns, OutlierClipper, drop_duplicates
from funcnet.data.shards import ShardedArrays, write_shards
from funcnet.data.split import Split, k_fold, take, train_val_test_split

__all__ = [
    "CleanReport",
    "clean",
    "describe",
    "Description",
    "drop_duplicates",
    "OutlierClipper",
    "ConstantColumns",
    "one_hot",
    "encode_labels",
    "decode_labels",
    "Standardizer",
    "MinMaxScaler",
    "Split",
    "take",
    "train_val_test_split",
    "k_fold",
    "batches",
    "prefetch_to_device",
    "write_shards",
    "ShardedArrays",
    "from_grain",
    "GrainBatches",
]
