"""MNIST-1D: the four reference models of Greydanus & Kobak (2024), trained as the paper does.

MNIST-1D is a 1-D analogue of MNIST made to tell models apart: 4000 training
and 1000 test sequences of length 40 in 10 classes, generated locally by the
``mnist1d`` package (``make_dataset(get_dataset_args())``, through
:func:`funcnet.datasets.load_mnist1d`; no download). The published test
accuracies on it are logistic regression 32%, MLP 68%, CNN 94% and GRU 91%.

The models, built from funcnet layers on inputs ``(N, 40, 1)``:

- logistic regression: ``Flatten -> Dense(10)``;
- MLP: ``Flatten -> Dense(256), Relu -> residual(Dense(256), Relu) -> Dense(10)``;
- CNN: three ``Conv`` with 25 channels and ReLU, kernel 5 / stride 2 / padding 1
  then kernel 3 / stride 2 / padding 1 twice (lengths 40 -> 19 -> 10 -> 5),
  ``Flatten`` (125) -> ``Dense(10)``;
- GRU: ``Bidirectional(RNN(GRUCell(6)))`` over the 40 steps, all outputs
  flattened (480) -> ``Dense(10)``.

Training is the reference's: Adam with learning rate 1e-2, batch 100, 8000
steps taking the batches in order and cycling through the training set
(what ``fit(shuffle=False)`` does: 200 epochs of 40 steps), softmax
cross-entropy, and the test accuracy after the last step. The seeds of a
model train as one stack (:func:`funcnet.stack_init`,
:func:`funcnet.stacked_train_step`, :func:`funcnet.stacked_runner`): one
compiled program updates all of them on each shared batch (the CNNs' steps
side by side, the other models' vmapped), and seed ``s``
starts from the weights of ``fit(..., key=jax.random.key(s))`` and follows
that run to float rounding (~1e-6 after 200 steps). Adam at 1e-2 amplifies
rounding, so after 8000 steps the stacked and the single runs of a seed are
different, equally good, models (e.g. MLP seed 1: 67.2% stacked with 8
seeds, 66.5% with 3, 64.8% alone with ``fit``).

Parameters start as in the reference code, which is PyTorch's: the defaults
of ``nn.Linear``/``nn.Conv1d`` (weights and biases uniform in
``+-1/sqrt(fan_in)``) and ``nn.GRU`` (every weight and bias uniform in
``+-1/sqrt(6)``); ``--init funcnet`` uses funcnet's defaults instead
(Glorot-uniform weights, orthogonal recurrent weights, zero biases).

The MLP's hidden width is 256, the ``hidden_size`` of the reference's
``get_model_args()``; with the model class's own default, 100, the MLP falls
short of 68% (``--mlp-hidden 100``, seeds 0-2: 64.2%, or 66.4% with
``--init funcnet``; the PyTorch reference code on the same data: 65.0%).

Run (about 2.5 minutes on a 2-core CPU for the 32 runs)::

    python examples/mnist1d.py
    python examples/mnist1d.py --models cnn,gru --seeds 16

It prints each model's per-seed test accuracies and one row per model -- the
published accuracy, the mean and standard deviation over the seeds, the time
to train all the seeds -- and ends with the line ``mnist1d test accuracy:
logreg 31.5%, mlp ...``. Measured with the defaults (seeds 0-7; see
``examples/RESULTS.md``): logistic regression 31.5 +- 0.0%, MLP 68.3 +-
0.9%, CNN 93.3 +- 0.9%, GRU 89.2 +- 2.3% (single GRU runs from 85.4 to
93.2%): each within two points of the published number, the GRU's spread
being the widest. The 8 seeds of each model as a deep ensemble (the mean of
their probabilities): MLP 76.3%, CNN 97.0%, GRU 96.3%, with expected
calibration errors 0.032, 0.030 and 0.067 against the single models' 0.281,
0.054 and 0.081.

The PyTorch reference code itself, run on the same data, gives MLP 68.8%,
CNN 93.7% and GRU 91.7% (seeds 0-2), and with the same initial weights and
batches funcnet's GRU follows it step for step (equal losses to 5 decimals
over the first 500 steps).
``--smoke`` trains every model for 200 steps on two seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# Run as a script, this file's folder comes first on the import path, where this file,
# named like the `mnist1d` package, would hide that package: drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import funcnet as fn  # noqa: E402

MODELS = ("logreg", "mlp", "cnn", "gru")
NAMES = {"logreg": "logistic regression", "mlp": "MLP", "cnn": "CNN", "gru": "GRU"}
PUBLISHED = {"logreg": 32.0, "mlp": 68.0, "cnn": 94.0, "gru": 91.0}  # test accuracy, %
TRAIN, BATCH = 4000, 100
# Steps fused into one compiled call: one call per epoch (a `lax.scan` of 40 steps) for
# the dense and recurrent models; one step per call for the CNN, whose convolution
# gradients XLA:CPU computes ~10x slower inside a rolled loop (and unrolled steps
# compile for longer). Under `jax.vmap` the 8 CNNs' convolutions become grouped
# convolutions, slow on XLA:CPU, so the CNN's stack runs its 8 steps side by side in one
# program (`method="unroll"`). Measured for 8 seeds on the 2-core CPU, interleaved, ms
# per step of all 8 models: CNN 4.1 unrolled stack, 7.4 vmapped stack, 4.8 one model
# after another (3.6 with 4 unrolled steps per call); GRU 7.3 stacked, 6.8 one after
# another. On this CPU stacking saves dispatch, not compute (see bench/stacked.py).
STEPS_PER_CALL = {"logreg": 40, "mlp": 40, "cnn": 1, "gru": 40}
METHOD = {"logreg": "vmap", "mlp": "vmap", "cnn": "unroll", "gru": "vmap"}


def _uniform(bound: float):
    return fn.initializers.uniform(-bound, bound)


def make_model(name: str, *, init: str = "reference", mlp_hidden: int = 256) -> fn.Layer:
    """One of the four reference models; ``init`` is ``"reference"`` or ``"funcnet"``."""
    reference = init == "reference"
    # PyTorch's nn.Linear / nn.Conv1d default: weight and bias uniform in +-1/sqrt(fan_in),
    # the weight as variance_scaling(1/3, fan_in, uniform) (jax's fan_in of a conv kernel
    # (k, C, F) is k * C, as PyTorch's).
    torch_w = fn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

    def dense(features: int, fan_in: int) -> fn.Layer:
        if not reference:
            return fn.Dense(features)
        return fn.Dense(features, w_init=torch_w, b_init=_uniform(1 / math.sqrt(fan_in)))

    def conv(kernel: int, fan_in: int) -> fn.Layer:
        inits = {}
        if reference:
            inits = {"w_init": torch_w, "b_init": _uniform(1 / math.sqrt(fan_in))}
        return fn.Conv(25, kernel, strides=2, padding=1, **inits)

    if name == "logreg":
        return fn.serial(fn.Flatten(), dense(10, 40))
    if name == "mlp":
        h = mlp_hidden
        return fn.serial(
            fn.Flatten(),
            dense(h, 40),
            fn.Relu(),
            fn.residual(dense(h, h), fn.Relu()),  # h + relu(W h + b)
            dense(10, h),
        )
    if name == "cnn":
        return fn.serial(
            conv(5, 5 * 1),  # (N, 40, 1) -> (N, 19, 25)
            fn.Relu(),
            conv(3, 3 * 25),  # -> (N, 10, 25)
            fn.Relu(),
            conv(3, 3 * 25),  # -> (N, 5, 25)
            fn.Relu(),
            fn.Flatten(),  # -> (N, 125)
            dense(10, 125),
        )
    if name == "gru":
        # PyTorch's nn.GRU: every weight and bias uniform in +-1/sqrt(hidden_size).
        u = _uniform(1 / math.sqrt(6))
        cell = fn.GRUCell(6, w_init=u, recurrent_init=u, b_init=u) if reference else fn.GRUCell(6)
        return fn.serial(
            fn.Bidirectional(fn.RNN(cell)),  # (N, 40, 1) -> (N, 40, 12)
            fn.Flatten(),  # -> (N, 480)
            dense(10, 480),
        )
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}.")


def train_seeds(
    model: fn.Layer,
    train,
    test,
    *,
    steps: int,
    seeds: int,
    steps_per_call: int = 40,
    method: str = "vmap",
    unroll: bool = False,
):
    """Train one model per seed (0 .. seeds-1) as one stacked run, as the reference trains one.

    Model ``s`` starts as ``fit(..., key=jax.random.key(s))`` would start it and
    sees the same batches (all seeds share each batch), so the stack is the
    per-seed runs of ``fit(shuffle=False)`` done at once.

    Returns:
        ``(test accuracies in % per seed, training seconds, stacked TrainState)``.
    """
    x, y = jax.device_put(train)
    optimizer = optax.adam(1e-2)
    loss = "sparse_categorical_cross_entropy"  # on logits, as torch.nn.CrossEntropyLoss
    start = time.perf_counter()
    ts = fn.stack_init(model, optimizer, seeds, x[:BATCH])
    step = fn.stacked_train_step(model, loss, optimizer, method=method)
    run = fn.stacked_runner(step, BATCH, unroll=unroll)
    order = jnp.arange(len(x), dtype=jnp.int32)  # batches in order, cycling through the set
    for begin in range(0, steps, steps_per_call):
        ts, losses = run(ts, (x, y), order, begin, min(steps_per_call, steps - begin))
    jax.block_until_ready(ts.params)
    seconds = time.perf_counter() - start
    if not np.isfinite(np.asarray(losses)).all():
        raise FloatingPointError(f"a non-finite training loss in the last steps: {losses[-1]}")
    logs = fn.stacked_evaluate(
        model, ts.params, ts.state, test, loss=loss, metrics=["accuracy"], batch_size=1000
    )
    return 100 * np.asarray(logs["accuracy"]), seconds, ts


def ensemble_report(model: fn.Layer, ts, test) -> dict:
    """The seeds as a deep ensemble (mean of probabilities) against the single models.

    Returns:
        ``{"ensemble_accuracy", "ensemble_ece", "single_ece"}`` (accuracy in %,
        expected calibration errors with 15 bins; ``single_ece`` per seed).
    """
    x, y = test
    single = fn.stacked_evaluate(model, ts.params, ts.state, test, metrics=["ece"], batch_size=1000)
    probs = fn.ensemble_predict(model, ts.params, ts.state, x, batch_size=1000)
    ece = fn.metrics.expected_calibration_error(from_logits=False)
    return {
        "ensemble_accuracy": 100 * float(np.mean(np.argmax(probs, -1) == y)),
        "ensemble_ece": float(ece.compute(ece.update(ece.init(), probs, y))),
        "single_ece": np.asarray(single["ece"]).tolist(),
    }


def main(
    *,
    models: tuple[str, ...] = MODELS,
    seeds: int = 8,
    steps: int = 8000,
    init: str = "reference",
    mlp_hidden: int = 256,
) -> dict:
    """Train every model on ``seeds`` seeds (0, 1, ...), the seeds of a model as one stacked run.

    Returns:
        ``{model: {"accuracies": [%...], "mean", "std", "seconds", "published"}}``
        (``seconds``: training all the seeds of the model, compiling included).
    """
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; choose from {MODELS}.")
    epoch_steps = TRAIN // BATCH
    if steps < epoch_steps or steps % epoch_steps:
        raise ValueError(f"`steps` must be a positive multiple of {epoch_steps}, got {steps}.")
    if seeds < 1:
        raise ValueError(f"`seeds` must be >= 1, got {seeds}.")
    train, test = fn.datasets.load_mnist1d(channel_axis=True)  # x (N, 40, 1), y int32
    print(
        f"MNIST-1D: {len(train[0])} train, {len(test[0])} test, x {train[0].shape[1:]}; "
        f"Adam 1e-2, batch {BATCH}, {steps} steps in order, {init} init, seeds 0..{seeds - 1} "
        "trained at once (one stacked run per model)"
    )
    results = {}
    for name in models:
        model = make_model(name, init=init, mlp_hidden=mlp_hidden)
        accuracies, seconds, ts = train_seeds(
            model,
            train,
            test,
            steps=steps,
            seeds=seeds,
            steps_per_call=STEPS_PER_CALL[name],
            method=METHOD[name],
            unroll=name == "cnn",
        )
        shown = " ".join(f"{a:.1f}" for a in accuracies)
        print(f"  {name}: {seeds} seeds in {seconds:.1f} s; test accuracy per seed (%): {shown}")
        ensemble = ensemble_report(model, ts, test)
        print(
            f"  {name}: the {seeds} seeds as an ensemble: accuracy "
            f"{ensemble['ensemble_accuracy']:.1f}% (single models {np.mean(accuracies):.1f}%), "
            f"ECE {ensemble['ensemble_ece']:.3f} (single models "
            f"{np.mean(ensemble['single_ece']):.3f})"
        )
        results[name] = {
            **ensemble,
            "accuracies": accuracies.tolist(),
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies)),
            "seconds": seconds,
            "published": PUBLISHED[name],
        }

    header = f"funcnet ({seeds} seeds)"
    print(f"\n{'model':<20} {'published':>9}  {header:>18}  time (all seeds)")
    for name, r in results.items():
        print(
            f"{NAMES[name]:<20} {r['published']:>8.0f}%  {r['mean']:>10.1f} +- {r['std']:.1f}%"
            f"  {r['seconds']:>7.1f} s"
        )
    summary = ", ".join(f"{name} {r['mean']:.1f}%" for name, r in results.items())
    print(f"mnist1d test accuracy: {summary}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}"
    )
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1 per model")
    parser.add_argument("--steps", type=int, default=8000, help="a multiple of 40")
    parser.add_argument(
        "--init",
        choices=("reference", "funcnet"),
        default="reference",
        help="initial params: PyTorch's defaults, as the reference code (reference), or funcnet's",
    )
    parser.add_argument("--mlp-hidden", type=int, default=256, help="hidden width of the mlp model")
    parser.add_argument("--smoke", action="store_true", help="200 steps, two seeds, seconds")
    args = parser.parse_args()
    main(
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        seeds=2 if args.smoke else args.seeds,
        steps=200 if args.smoke else args.steps,
        init=args.init,
        mlp_hidden=args.mlp_hidden,
    )
