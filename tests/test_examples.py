"""The examples run end to end (shortened) and reach a sensible result.

Every example runs once from the command line with ``--smoke`` (in a
subprocess, as a user would run it); the in-process tests check numbers and
files of shortened runs.
"""

import importlib.util
import math
import os
import pathlib
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

STRICT_DTYPES = False  # optax.adam is not strict-clean

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_idx(path, array):
    """An IDX file: magic ``0x0000 08 ndim``, big-endian dimensions, unsigned bytes."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_fake_mnist(folder):
    """The four MNIST files made of scikit-learn's digits, upscaled 3x and padded to 28x28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # (1797, 24, 24), values 0..16
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))) * (255 / 16)
    labels = digits.target
    for stem, part in (("train", slice(0, 1400)), ("t10k", slice(1400, None))):
        write_idx(folder / f"{stem}-images-idx3-ubyte", np.round(images[part]))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels[part])
    return folder


def test_binary_classifier_fit_and_hand_written_loop_agree(capsys):
    result = load("binary_classifier").main(epochs=5, n_train=4000, lr=1e-2)
    # logistic regression gets ~0.57 on this XOR-like task; the best possible is 0.95
    assert result["fit_accuracy"] > 0.8
    # The hand-written loop uses fit's keys (initialisation, each epoch's shuffle), so after
    # 310 steps both hold the same parameters: bitwise on CPU; the tolerance leaves room for
    # another backend fusing fit's compiled steps differently. A different order of the
    # batches moves them by several 1e-2 (0.07 for fit shuffling with the next epoch's key).
    fit_params, manual_params = result["fit_params"], result["manual_params"]
    assert jax.tree.structure(fit_params) == jax.tree.structure(manual_params)
    for a, b in zip(jax.tree.leaves(fit_params), jax.tree.leaves(manual_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the same accuracy, up to a borderline test example or two
    assert result["manual_accuracy"] == pytest.approx(result["fit_accuracy"], abs=2.5e-3)
    out = capsys.readouterr().out
    assert "largest difference between the two sets of parameters:" in out
    assert "test accuracy:" in out.splitlines()[-1]


def test_mlp_reads_mnist_idx_files(tmp_path, capsys):
    pytest.importorskip("sklearn")
    result = load("mlp_digits").main(epochs=3, hidden=128, mnist=str(write_fake_mnist(tmp_path)))
    assert result["test_accuracy"] > 0.85
    assert "data: MNIST, 1260 train, 140 val, 397 test, 784 features" in capsys.readouterr().out


def test_cnn_digits_learns_with_augmentation(capsys):
    pytest.importorskip("sklearn")
    result = load("cnn_digits").main(epochs=6, log_every=2)
    assert result["test_accuracy"] > 0.85
    assert result["seconds_per_epoch"] > 0
    out = capsys.readouterr().out
    assert "val_accuracy" in out
    assert out.splitlines()[-1].startswith("test accuracy: ")


def test_gan_covers_modes_and_saves_png(tmp_path, capsys):
    png = tmp_path / "gan.png"
    result = load("gan").main(steps=1600, seed=1, n_eval=1000, out=str(png))
    # a collapsed generator covers 1 or 2 of the 8 modes; the full run covers 8
    assert result["modes"] >= 5
    assert result["high_quality"] > 0.2
    out = capsys.readouterr().out
    assert "modes covered:" in out and out.splitlines()[-1].startswith("high-quality samples: ")
    if importlib.util.find_spec("matplotlib") is not None:
        assert result["png"] == str(png) and png.stat().st_size > 1000


def test_vae_elbo_improves_and_saves_png(tmp_path, capsys):
    pytest.importorskip("sklearn")
    png = tmp_path / "vae.png"
    result = load("vae").main(epochs=15, out=str(png), log_every=5)
    assert result["test_elbo"] == pytest.approx(-(result["reconstruction"] + result["kl"]))
    assert result["kl"] > 0
    assert result["floor"] < result["reconstruction"] < 35  # an untrained decoder gives ~44
    assert capsys.readouterr().out.splitlines()[-1].startswith("test ELBO: ")
    if importlib.util.find_spec("matplotlib") is not None:
        assert result["png"] == str(png) and png.stat().st_size > 1000


# --------------------------------------------------------------------------- every example, --smoke


def _numbers(line):
    return [float(v) for v in re.findall(r"-?\d+\.\d+", line)]


# example -> (the start of its last line, a check of the numbers on that line)
SMOKE = {
    "quickstart": ("test accuracy: ", lambda v: v[0] > 0.5),
    "binary_classifier": ("test accuracy: ", lambda v: v[0] > 0.7),  # chance 0.5
    "mlp_digits": ("test accuracy: ", lambda v: v[0] > 0.9),
    "cnn_digits": ("test accuracy: ", lambda v: v[0] > 0.5),
    # logreg, mlp, cnn, gru (%): all above chance (10%), the CNN far above logistic regression
    "mnist1d": ("mnist1d test accuracy: ", lambda v: min(v) > 20 and v[2] > v[0] + 20),
    "lstm_sequence": ("test accuracy: ", lambda v: v[0] > 0.6 and v[1] < 0.6),  # (LSTM, last step)
    "gan": ("high-quality samples: ", lambda v: v[0] > 0.1),
    "vae": ("test ELBO: ", lambda v: v[0] > -40),  # an untrained decoder gives about -44.4
    # character frequencies alone (a unigram model) give about 4.6 bits per character
    "transformer_lm": ("validation bits per character: ", lambda v: v[0] < 4.3),
    "data_parallel": ("test accuracy: ", lambda v: v[0] > 0.5),
    # (int8, float, int4, 2-bit PTQ, 2-bit QAT, 80% sparse, student, student on labels)
    "compress_digits": (
        "compress: ",
        lambda v: len(v) == 8 and v[1] > 0.8 and v[0] >= v[1] - 0.02 and v[4] > v[3],
    ),
    # (deletion AUC: removing the top-attributed pixels first, removing random pixels)
    "explain_digits": ("explain: ", lambda v: v[0] < v[1]),
    # (the best rate's mean test accuracy, its seeds' ensemble accuracy)
    "sweep": ("sweep: best learning rate ", lambda v: v[0] > 0.5 and v[1] > 0.5),
    # (largest logit difference, fraction of greedy tokens equal) against transformers
    "hf_gpt2": ("logits max abs difference vs transformers: ", lambda v: v[0] < 1e-4 and v[1] == 1),
    # (loss on the 2x4 mesh, loss on one device, how much smaller the state per device is)
    "tensor_parallel": ("tensor parallel: ", lambda v: abs(v[0] - v[1]) < 1e-3 and v[2] > 3),
}


def test_every_example_has_a_smoke_test():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == sorted(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_example_runs_from_the_command_line(name, tmp_path):
    pytest.importorskip("sklearn")
    if name == "mnist1d":
        pytest.importorskip("mnist1d")
    if name == "hf_gpt2":
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke"]
    if name in ("gan", "vae", "sweep"):
        command += ["--out", str(tmp_path / f"{name}.png")]
    env = dict(os.environ)  # the tests' persistent compilation cache (see conftest.py)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    start, check = SMOKE[name]
    assert last.startswith(start), run.stdout[-2000:]
    assert check(_numbers(last)), last


# --------------------------------------------------------------------------- the new examples


def test_mnist1d_models_have_the_reference_sizes():
    """Parameter counts of the PyTorch reference models (greydanus/mnist1d ``models.py``)."""
    import funcnet as fn

    mnist1d = load("mnist1d")
    spec = jax.ShapeDtypeStruct((100, 40, 1), np.float32)
    expected = {"logreg": 410, "mlp": 78858, "cnn": 5210, "gru": 5134}
    for init in ("reference", "funcnet"):
        for name, count in expected.items():
            model = mnist1d.make_model(name, init=init)
            params, _ = jax.eval_shape(model.init, jax.random.key(0), spec)
            assert fn.param_count(params) == count, (name, init)
            assert fn.output_spec(model, spec).shape == (100, 10)
    params, _ = jax.eval_shape(
        mnist1d.make_model("mlp", mlp_hidden=100).init, jax.random.key(0), spec
    )
    assert fn.param_count(params) == 15210
    # the reference (PyTorch) initialisation: uniform in +-1/sqrt(fan_in)
    params, _ = mnist1d.make_model("cnn").init(jax.random.key(0), np.zeros((1, 40, 1), np.float32))
    w, b = params[2]["w"], params[2]["b"]  # the second convolution, fan_in 3 * 25
    bound = 1 / math.sqrt(75)
    assert w.shape == (3, 25, 25)
    assert float(np.abs(w).max()) <= bound and float(np.abs(w).max()) > 0.9 * bound
    assert 0.5 * bound < float(np.abs(b).max()) <= bound  # biases drawn too, not zeros


def test_mnist1d_stacked_seeds_equal_fit_per_seed():
    """The example's stacked run of the seeds is fit(shuffle=False) run once per seed."""
    pytest.importorskip("mnist1d")
    import optax

    import funcnet as fn

    mnist1d = load("mnist1d")
    train, test = fn.datasets.load_mnist1d(channel_axis=True)
    model = mnist1d.make_model("mlp", mlp_hidden=16)
    accuracies, seconds, stack = mnist1d.train_seeds(model, train, test, steps=80, seeds=2)
    assert accuracies.shape == (2,) and seconds > 0
    for seed in range(2):
        ts, _ = fn.fit(
            model,
            optax.adam(1e-2),
            "sparse_categorical_cross_entropy",
            train,
            epochs=2,
            batch_size=100,
            shuffle=False,
            steps_per_execution=40,
            key=jax.random.key(seed),
            verbose=0,
        )
        for a, b in zip(
            jax.tree.leaves(fn.model_at(stack.params, seed)), jax.tree.leaves(ts.params)
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        logs = fn.evaluate(model, ts.params, ts.state, test, metrics=["accuracy"], batch_size=1000)
        assert accuracies[seed] == pytest.approx(100 * logs["accuracy"], abs=0.25)


def test_transformer_lm_windows_and_generation():
    import funcnet as fn

    lm = load("transformer_lm")
    # the windows: targets are the inputs shifted by one character
    x, y = lm.windows(np.arange(20, dtype=np.int32), context=4, stride=3)
    assert x.shape == y.shape == (6, 4) and (y == x + 1).all()
    assert (x[:, 0] == [0, 3, 6, 9, 12, 15]).all()
    vocab = lm.Vocabulary("abc\n")
    assert vocab.decode(vocab.encode("cab\nz")) == "cab\n"  # unknown characters dropped
    # sampling with fn.generate: continuations of the prompt, in the vocabulary, reproducibly
    model = lm.make_model(len(vocab), width=8, layers=1, heads=2, context=6, dropout=0.0)
    params, state = model.init(jax.random.key(0), np.zeros((1, 6), np.int32))
    args = dict(length=4, temperature=1.0, rows=3)
    a, speed = lm.sample_text(model, params, state, vocab, "ab", seed=1, **args)
    b, _ = lm.sample_text(model, params, state, vocab, "ab", seed=1, **args)
    c, _ = lm.sample_text(model, params, state, vocab, "ab", seed=2, **args)
    assert a == b and a != c and speed > 0
    assert all(len(s) == 6 and s.startswith("ab") and set(s) <= set("abc\n") for s in a)
    # the learned table has 6 positions: 2 + 5 characters do not fit, and the error says so
    with pytest.raises(fn.LayerError, match=r"PositionalEmbedding\(6\): a decoding state"):
        lm.sample_text(model, params, state, vocab, "ab", seed=1, length=6, temperature=1.0)
    # with RoPE and multi-query attention there is no table: any length decodes
    rope = lm.make_model(
        len(vocab), width=8, layers=1, heads=2, context=6, dropout=0.0, kv_heads=1, rope=True
    )
    params, state = rope.init(jax.random.key(0), np.zeros((1, 6), np.int32))
    assert params[1][0]["attention"][1]["key"]["w"].shape == (1, 8, 1, 4)
    long, _ = lm.sample_text(rope, params, state, vocab, "ab", seed=1, length=10, temperature=1.0)
    assert all(len(s) == 12 for s in long)


def test_sweep_ensemble_is_the_mean_of_its_models_probabilities():
    """The sweep's ensemble of rows (1, 2) of a stack, against numpy on the models' logits."""
    import optax

    import funcnet as fn

    sweep = load("sweep")
    model = sweep.make_model()
    x = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 40).astype(np.int32)
    ts = fn.stack_init(model, optax.adam(1e-3), 3, x[:1])
    report = sweep.ensemble(model, ts, [1, 2], (x, y))
    logits = np.asarray(fn.stacked_predict(model, ts.params, ts.state, x), np.float64)[1:]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert report["accuracy"] == pytest.approx(np.mean(probs.mean(0).argmax(-1) == y))
    np.testing.assert_allclose(report["single_accuracy"], np.mean(probs.argmax(-1) == y, 1))
