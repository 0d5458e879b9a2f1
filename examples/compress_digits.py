"""Compress a trained digits CNN: static int8, int8/int4 weights, QAT, pruning, distillation.

Trains the CNN of ``examples/cnn_digits.py`` (two convolutions with 32 and
64 channels, a dense layer of 128; 53k parameters) on scikit-learn's 8x8
digits without augmentation, then makes it smaller with :mod:`funcnet.compress`
and reports the test accuracy and the storage size of each variant:

- static int8 (``quantize_model``): activation scales calibrated on 4
  training batches, convolutions and matmuls computed as ``int8 x int8 ->
  int32``; its accuracy, size and jitted inference time against float;
- post-training quantization (PTQ) of the kernels, per output channel,
  symmetric: int8 (``quantize``), int4 and 2-bit (``quantize(bits=...)``,
  sizes counted packed with ``size_bytes(bits=...)``); biases stay float32;
- quantization-aware training (QAT): a few epochs of fine-tuning of the
  trained model through ``qat(model, bits=2)`` (kernels fake-quantized with a
  straight-through gradient), then real 2-bit weights; the model on them
  computes exactly what the QAT model computed. The control: the same epochs
  of fine-tuning in float, then 2-bit PTQ;
- magnitude pruning (``magnitude_masks``, global) to 50, 80 and 90% of the
  kernel weights, before and after a few epochs of fine-tuning with
  ``keep_masked`` (the pruned weights stay 0), with ``sparsity_report``;
- distillation: a small MLP student (``Dense(32)``, 2.4k parameters) trained
  with ``distillation_loss`` on the CNN's logits against the same student
  trained on the labels alone (the mean over 3 seeds each).

With ``--mnist1d`` (and ``pip install mnist1d``) it also trains two MNIST-1D
models built as ``examples/mnist1d.py`` builds them (the CNN, and the MLP
with hidden width 256; 2000 steps instead of the reference's 8000) and
reports their float, int8-weight and static int8 accuracy and size; then the
CNN teaches the MLP: labels alone, distilled on the 4000 training inputs,
the teacher's argmax and distillation on 12,000 more unlabeled inputs from
the MNIST-1D generator (``--transfer``), ``--mnist1d-seeds`` seeds each.

Run (about 45 s on a quiet 2-core CPU; ``--mnist1d`` adds about 2 min of
CPU; most of it is compiling: each training run is a new program)::

    python examples/compress_digits.py
    python examples/compress_digits.py --mnist1d --seed 1

It ends with the line ``compress: int8 accuracy ... vs float ..., ...``.
Measured with the defaults (seed 0; 359 test images, so one error is 0.0028):

=================================  =========  =====  ========
variant                            size       ratio  accuracy
=================================  =========  =====  ========
float32                            207.0 KiB  1.0x   0.9944
int8 static (integer ops)          53.4 KiB   3.9x   0.9944
int8 PTQ                           53.4 KiB   3.9x   0.9944
int4 PTQ (packed)                  27.6 KiB   7.5x   0.9944
2-bit PTQ (packed)                 14.7 KiB   14.1x  0.9192
2-bit QAT, 3 epochs                14.7 KiB   14.1x  0.9833
3 float epochs, then 2-bit PTQ     14.7 KiB   14.1x  0.9304
=================================  =========  =====  ========

int8 (static, with integer ops, or weights only) and even int4 weights lose
nothing here; at 2 bits PTQ loses 7.5 points and QAT wins back all but 1.1
of them (fine-tuning in float first does not). The static int8 CNN is slower
than float on XLA:CPU (4.0 vs 2.8 ms a batch of 256, loaded machine): the
model is too small for its faster integer convolutions to pay for the
quantize/rescale passes (see ``bench/quantized.py``).
Pruning 50/80/90% of the kernel weights: 0.9889/0.9248/0.8802 right after
pruning, 0.9972/0.9972/0.9889 after 3 epochs of fine-tuning with the masks
kept (the extra epochs help the 20-epoch model too). Distillation does not
help on digits: the 9.4 KiB student (22x smaller than the teacher) scores
0.9879 distilled and 0.9879 on labels alone (means of 3 seeds; Dense(16) and
Dense(8) students, T=2/alpha=0.5, showed no gain either). MNIST-1D
(``--mnist1d``): CNN float 0.893, int8 weights 0.893, static int8 0.897
(20.4 -> 5.7 KiB); MLP float 0.657, 0.660, 0.659 (308.0 -> 80.6 KiB).
Distillation helps there: the MLP student scores 0.671 on labels alone,
0.676 distilled on the same inputs, 0.767 on the teacher's argmax of 12,000
more unlabeled inputs and 0.794 distilled on them (means of 2 seeds).
``--smoke`` trains for fewer epochs, prunes to 80% only, one student seed, no
MNIST-1D (about 25 s, nearly all compiling).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import sys
import time

# Run as a script, this file's folder comes first on the import path, where
# examples/mnist1d.py would hide the `mnist1d` package: drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import funcnet as fn  # noqa: E402
from funcnet import compress  # noqa: E402

LOSS = "sparse_categorical_cross_entropy"


def make_cnn() -> fn.Layer:
    """The CNN of ``examples/cnn_digits.py``."""
    return fn.serial(
        fn.Conv(32, (3, 3), padding="SAME"),
        fn.Relu(),
        fn.MaxPool(2),
        fn.Conv(64, (3, 3), padding="SAME"),
        fn.Relu(),
        fn.MaxPool(2),
        fn.Flatten(),
        fn.Dense(128),
        fn.Relu(),
        fn.Dense(10),
    )


def make_student() -> fn.Layer:
    return fn.serial(fn.Flatten(), fn.Dense(32), fn.Relu(), fn.Dense(10))


def accuracy(model, params, state, data) -> float:
    x, y = data
    return float(np.mean(np.argmax(fn.predict(model, params, state, x), -1) == y))


def train(model, data, *, epochs, lr=1e-3, params=None, optimizer=None, loss=LOSS, seed=0):
    """``fit`` from scratch, or from ``params`` (fine-tuning); returns the ``TrainState``."""
    optimizer = optimizer or optax.adam(lr)
    start = None
    if params is not None:
        start = fn.TrainState.create(model, optimizer, jax.random.key(seed), data[0][:1])
        start = start._replace(params=params, opt_state=optimizer.init(params))
    conv = "Conv" in repr(model)
    ts, _ = fn.fit(
        model,
        optimizer,
        loss,
        data,
        epochs=epochs,
        batch_size=32,
        initial_state=start,
        # fused steps per call: few for convolutions (unrolled on CPU), many otherwise
        steps_per_execution=2 if conv else 45,
        key=jax.random.key(seed),
        verbose=0,
    )
    return ts


def kib(n: int) -> str:
    return f"{n / 1024:7.1f} KiB"


def quantization(model, ts, train_data, test, *, epochs: int) -> dict:
    float_acc = accuracy(model, ts.params, ts.state, test)
    float_size = compress.size_bytes(ts.params)
    print(f"\n{'variant':<34} {'size':>11} {'ratio':>6} {'accuracy':>9}")
    row = lambda name, size, acc: print(
        f"{name:<34} {kib(size)} {float_size / size:5.1f}x {acc:9.4f}"
    )
    row("float32", float_size, float_acc)
    out = {"float": float_acc}
    # static int8: calibrated on 4 training batches, integer matmuls and convolutions
    qmodel, qparams = compress.quantize_model(
        model, ts.params, ts.state, [train_data[0][i : i + 64] for i in range(0, 256, 64)]
    )
    out["static8"] = accuracy(qmodel, qparams, ts.state, test)
    row("int8 static (int8 x int8 -> int32)", compress.size_bytes(qparams), out["static8"])
    out["speed"] = speed(model, ts.params, qmodel, qparams, ts.state, test[0])
    for bits in (8, 4, 2):
        qparams = compress.quantize(ts.params, bits=bits)
        acc = accuracy(model, compress.dequantize(qparams), ts.state, test)
        row(
            f"int{bits} PTQ" if bits > 2 else "2-bit PTQ",
            compress.size_bytes(qparams, bits=bits),
            acc,
        )
        out[f"ptq{bits}"] = acc
    qmodel = compress.qat(model, bits=2)
    tuned = train(qmodel, train_data, epochs=epochs, params=ts.params).params
    qparams = compress.quantize(tuned, bits=2)
    out["qat2"] = accuracy(model, compress.dequantize(qparams), ts.state, test)
    same = accuracy(qmodel, tuned, ts.state, test) == out["qat2"]
    row(f"2-bit QAT ({epochs} epochs)", compress.size_bytes(qparams, bits=2), out["qat2"])
    print(f"  (the QAT model and the model on its 2-bit weights agree: {same})")
    # The control: the same fine-tuning in float, then 2-bit PTQ.
    tuned = train(model, train_data, epochs=epochs, params=ts.params).params
    qparams = compress.quantize(tuned, bits=2)
    out["control2"] = accuracy(model, compress.dequantize(qparams), ts.state, test)
    row(
        f"{epochs} float epochs, then 2-bit PTQ",
        compress.size_bytes(qparams, bits=2),
        out["control2"],
    )
    return out


def speed(model, params, qmodel, qparams, state, x, *, rounds: int = 5, calls: int = 20) -> tuple:
    """Median ms per jitted call (batch 256 from ``x``) of the float and the int8 model."""
    x = np.resize(x, (256, *x.shape[1:]))
    fns = [
        (jax.jit(lambda p, s, x: model.apply(p, s, x)[0]), params),
        (jax.jit(lambda p, s, x: qmodel.apply(p, s, x)[0]), qparams),
    ]
    times: list[list[float]] = [[], []]
    for f, p in fns:
        f(p, state, x).block_until_ready()
    for _ in range(rounds):  # interleaved
        for i, (f, p) in enumerate(fns):
            start = time.perf_counter()
            for _ in range(calls):
                y = f(p, state, x)
            y.block_until_ready()
            times[i].append((time.perf_counter() - start) / calls * 1e3)
    f_ms, q_ms = float(np.median(times[0])), float(np.median(times[1]))
    print(f"  (jitted inference, batch 256: float32 {f_ms:.2f} ms, int8 {q_ms:.2f} ms)")
    return f_ms, q_ms


def pruning(model, ts, train_data, test, *, epochs: int, sparsities) -> dict:
    print(f"\n{'pruned (global, kernels)':<26} {'sparsity':>8} {'no tuning':>10} {'tuned':>8}")
    out = {}
    for sparsity in sparsities:
        masks = compress.magnitude_masks(ts.params, sparsity)
        pruned = compress.apply_masks(ts.params, masks)
        before = accuracy(model, pruned, ts.state, test)
        opt = optax.chain(optax.adam(1e-3), compress.keep_masked(masks))
        tuned = train(model, train_data, epochs=epochs, params=pruned, optimizer=opt).params
        zeros, total, frac = compress.sparsity_report(tuned)["total"]
        out[sparsity] = accuracy(model, tuned, ts.state, test)
        print(
            f"{f'{sparsity:.0%} ({zeros}/{total} zero)':<26} {frac:8.3f} {before:10.4f} "
            f"{out[sparsity]:8.4f}"
        )
    return out


def distillation(teacher, ts, train_data, test, *, epochs: int, seeds: int) -> dict:
    student = make_student()
    x, y = train_data
    targets = {"labels": y, "teacher_logits": fn.predict(teacher, ts.params, ts.state, x)}
    loss = compress.distillation_loss(temperature=4.0, alpha=0.9)
    distilled, alone = [], []
    for seed in range(seeds):
        s = train(student, (x, targets), epochs=epochs, lr=3e-3, loss=loss, seed=seed)
        distilled.append(accuracy(student, s.params, s.state, test))
        s = train(student, train_data, epochs=epochs, lr=3e-3, seed=seed)
        alone.append(accuracy(student, s.params, s.state, test))
    size = compress.size_bytes(s.params)
    print(
        f"\nstudent {student} ({kib(size).strip()}, teacher "
        f"{kib(compress.size_bytes(ts.params)).strip()}), {epochs} epochs, seeds 0..{seeds - 1}:"
        f"\n  distilled (T=4, alpha=0.9): {np.mean(distilled):.4f} "
        f"({' '.join(f'{a:.4f}' for a in distilled)})"
        f"\n  labels alone:               {np.mean(alone):.4f} "
        f"({' '.join(f'{a:.4f}' for a in alone)})"
    )
    return {"distilled": float(np.mean(distilled)), "alone": float(np.mean(alone))}


def make_mnist1d(name: str) -> fn.Layer:
    """The MNIST-1D CNN or MLP of ``examples/mnist1d.py``, with its PyTorch-style init."""
    torch_w = fn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")

    def bias(fan_in):
        return fn.initializers.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def dense(features, fan_in):
        return fn.Dense(features, w_init=torch_w, b_init=bias(fan_in))

    def conv(kernel, fan_in):
        return fn.Conv(25, kernel, strides=2, padding=1, w_init=torch_w, b_init=bias(fan_in))

    if name == "cnn":
        return fn.serial(
            conv(5, 5), fn.Relu(), conv(3, 75), fn.Relu(), conv(3, 75), fn.Relu(),
            fn.Flatten(), dense(10, 125),
        )  # fmt: skip
    return fn.serial(
        fn.Flatten(), dense(256, 40), fn.Relu(), fn.residual(dense(256, 256), fn.Relu()),
        dense(10, 256),
    )  # fmt: skip


def fit_steps(model, data, loss, *, steps: int, seed: int, spe: int = 40):
    """Adam 1e-2, batch 100, about ``steps`` steps (whole shuffled epochs); the ``TrainState``."""
    ts, _ = fn.fit(
        model, optax.adam(1e-2), loss, data, epochs=max(1, steps * 100 // len(data[0])),
        batch_size=100, steps_per_execution=spe, key=jax.random.key(seed), verbose=0,
    )  # fmt: skip
    return ts


def mnist1d_inputs(n: int, seed: int = 7) -> np.ndarray:
    """``n`` more MNIST-1D inputs ``(n, 40, 1)``: the generator with another seed, no labels."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = n, seed, 1.0
    saved = random.getstate(), np.random.get_state()  # the generator reseeds both
    try:
        data = make_dataset(args)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return np.asarray(data["x"], np.float32)[..., None]


def mnist1d(steps: int, *, seeds: int, transfer: int) -> dict:
    train_data, test = fn.datasets.load_mnist1d(channel_axis=True)
    print(f"\nMNIST-1D ({steps} steps of Adam 1e-2, batch 100, in order):")
    out, trained = {}, {}
    for name in ("cnn", "mlp"):
        model = make_mnist1d(name)
        ts, _ = fn.fit(
            model,
            optax.adam(1e-2),
            LOSS,
            train_data,
            epochs=steps // 40,
            batch_size=100,
            shuffle=False,
            steps_per_execution=1 if name == "cnn" else 40,
            key=jax.random.key(0),
            verbose=0,
        )
        trained[name] = (model, ts)
        qparams = compress.quantize(ts.params)
        f_acc = accuracy(model, ts.params, ts.state, test)
        q_acc = accuracy(model, compress.dequantize(qparams), ts.state, test)
        qmodel, sparams = compress.quantize_model(
            model, ts.params, ts.state, [train_data[0][:200], train_data[0][200:400]]
        )
        s_acc = accuracy(qmodel, sparams, ts.state, test)
        f_size, q_size = compress.size_bytes(ts.params), compress.size_bytes(qparams)
        print(
            f"  {name}: float {f_acc:.3f} ({kib(f_size).strip()}), int8 weights {q_acc:.3f}, "
            f"static int8 {s_acc:.3f} ({kib(q_size).strip()}, {f_size / q_size:.1f}x smaller)"
        )
        out[name] = (f_acc, q_acc, s_acc)
    out["distill"] = mnist1d_distillation(
        *trained["cnn"], train_data, test, steps=steps, seeds=seeds, transfer=transfer
    )
    return out


def mnist1d_distillation(teacher, tts, train_data, test, *, steps, seeds, transfer) -> dict:
    """The CNN teaches the MLP: labels alone, distilled, distilled on more (unlabeled) inputs."""
    x, y = train_data
    extra = mnist1d_inputs(transfer)
    x_all = np.concatenate([x, extra])
    logits = fn.predict(teacher, tts.params, tts.state, x_all)
    # the transfer inputs have no labels: the teacher's argmax stands in for the hard term
    y_all = np.concatenate([y, np.argmax(logits[len(x) :], -1).astype(y.dtype)])
    kd = compress.distillation_loss(temperature=4.0, alpha=0.9)
    recipes = {
        "labels alone (4000)": lambda: ((x, y), LOSS),
        "distilled (4000)": lambda: ((x, {"labels": y, "teacher_logits": logits[: len(x)]}), kd),
        f"teacher's argmax (4000 + {transfer})": lambda: ((x_all, y_all), LOSS),
        f"distilled (4000 + {transfer})": lambda: (
            (x_all, {"labels": y_all, "teacher_logits": logits}), kd),
    }  # fmt: skip
    student = make_mnist1d("mlp")
    t_acc = accuracy(teacher, tts.params, tts.state, test)
    print(
        f"\n  MNIST-1D distillation: CNN teacher ({t_acc:.3f}"
        f", {kib(compress.size_bytes(tts.params)).strip()}) -> MLP student (width 256), "
        f"~{steps} shuffled steps each, seeds 0..{seeds - 1}, T=4, alpha=0.9; {transfer} "
        "unlabeled generator inputs (seed 7) for the transfer set:"
    )
    out = {}
    for name, make in recipes.items():
        data, loss = make()
        accs = []
        for seed in range(seeds):
            ts = fit_steps(student, data, loss, steps=steps, seed=seed)
            accs.append(accuracy(student, ts.params, ts.state, test))
        out[name] = float(np.mean(accs))
        print(f"    {name:<36} {out[name]:.3f} ({' '.join(f'{a:.3f}' for a in accs)})")
    print(f"    (student {kib(compress.size_bytes(ts.params)).strip()})")
    return out


def main(*, epochs: int = 20, tune_epochs: int = 3, student_epochs: int = 60, seeds: int = 3,
         mnist1d_steps: int | None = None, mnist1d_seeds: int = 2, transfer: int = 12000,
         seed: int = 0,
         sparsities: tuple[float, ...] = (0.5, 0.8, 0.9)) -> dict:  # fmt: skip
    """Train the CNN, compress it every way, print the tables; returns the numbers."""
    start = time.perf_counter()
    (x, y), (x_test, y_test) = fn.datasets.load_digits(seed=seed)
    norm = fn.data.Standardizer.fit(x.astype(np.float32), axis=(0, 1, 2))
    train_data = (norm.apply(x.astype(np.float32)), y)
    test = (norm.apply(x_test.astype(np.float32)), y_test)
    model = make_cnn()
    ts = train(model, train_data, epochs=epochs, seed=seed)
    print(
        f"digits CNN: {fn.param_count(ts.params)} parameters, {epochs} epochs "
        f"({time.perf_counter() - start:.1f} s)"
    )
    tick = [time.perf_counter()]

    def took():
        now = time.perf_counter()
        print(f"  ({now - tick[0]:.1f} s)")
        tick[0] = now

    results = {"quantize": quantization(model, ts, train_data, test, epochs=tune_epochs)}
    took()
    results["prune"] = pruning(
        model, ts, train_data, test, epochs=tune_epochs, sparsities=sparsities
    )
    took()
    results["distill"] = distillation(
        model, ts, train_data, test, epochs=student_epochs, seeds=seeds
    )
    took()
    if mnist1d_steps and importlib.util.find_spec("mnist1d") is None:
        print("\nMNIST-1D skipped: `pip install mnist1d` to run it")
    elif mnist1d_steps:
        results["mnist1d"] = mnist1d(mnist1d_steps, seeds=mnist1d_seeds, transfer=transfer)
        took()
    print(f"\n({time.perf_counter() - start:.1f} s in all)")
    q, p, d = results["quantize"], results["prune"], results["distill"]
    print(
        f"static int8: accuracy {q['static8']:.4f} (float {q['float']:.4f}); jitted inference "
        f"{q['speed'][1]:.2f} ms vs float {q['speed'][0]:.2f} ms (batch 256)"
    )
    shown = 0.8 if 0.8 in p else sparsities[0]
    print(
        f"compress: int8 accuracy {q['ptq8']:.4f} vs float {q['float']:.4f}, int4 "
        f"{q['ptq4']:.4f}, 2-bit PTQ {q['ptq2']:.4f} QAT {q['qat2']:.4f}, {shown:.0%} sparse "
        f"{p[shown]:.4f}, student {d['distilled']:.4f} (labels alone {d['alone']:.4f})"
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=20, help="training the CNN")
    parser.add_argument("--tune-epochs", type=int, default=3, help="QAT and pruning fine-tuning")
    parser.add_argument("--student-epochs", type=int, default=60, help="training each student")
    parser.add_argument("--seeds", type=int, default=3, help="students per recipe")
    parser.add_argument("--mnist1d", action="store_true", help="also the MNIST-1D CNN and MLP")
    parser.add_argument("--mnist1d-steps", type=int, default=2000, help="a multiple of 40")
    parser.add_argument("--mnist1d-seeds", type=int, default=2, help="MNIST-1D students per recipe")
    parser.add_argument(
        "--transfer", type=int, default=12000, help="extra unlabeled MNIST-1D inputs to distill on"
    )
    parser.add_argument("--seed", type=int, default=0, help="data split and CNN init")
    parser.add_argument("--smoke", action="store_true", help="fewer epochs, no MNIST-1D")
    args = parser.parse_args()
    main(
        epochs=4 if args.smoke else args.epochs,
        tune_epochs=1 if args.smoke else args.tune_epochs,
        student_epochs=10 if args.smoke else args.student_epochs,
        seeds=1 if args.smoke else args.seeds,
        mnist1d_steps=args.mnist1d_steps if args.mnist1d and not args.smoke else None,
        mnist1d_seeds=args.mnist1d_seeds,
        transfer=args.transfer,
        seed=args.seed,
        sparsities=(0.8,) if args.smoke else (0.5, 0.8, 0.9),
    )
