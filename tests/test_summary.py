"""Model summaries: rows, shapes, parameter counts, FLOPs, from shapes alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import output_spec
from funcnet.summaries import Summary, SummaryRow, _flops_of, param_count, summary


def _spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def test_dense_stack_rows_flops_and_totals(key):
    model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(3))
    printed = []
    info = summary(model, _spec(32, 8), print_fn=printed.append)
    assert isinstance(info, Summary) and all(isinstance(r, SummaryRow) for r in info.rows)
    assert [(r.path, r.depth, r.description) for r in info.rows] == [
        ("", 0, "serial"),
        ("0", 1, "Dense(16)"),
        ("1", 1, "relu"),
        ("2", 1, "Dense(3)"),
    ]
    assert [r.output.shape for r in info.rows] == [(32, 3), (32, 16), (32, 16), (32, 3)]
    assert [r.params for r in info.rows] == [195, 8 * 16 + 16, 0, 16 * 3 + 3]
    params, _ = model.init(key, jnp.zeros((1, 8)))
    assert info.params == param_count(params) == 195
    assert info.param_bytes == 195 * 4 and info.state == 0 and info.bytes == 780
    # a matmul is 2 FLOPs per multiply-add; XLA adds the bias (and relu) elementwise
    dense1 = info.rows[1].flops
    assert 2 * 32 * 8 * 16 <= dense1 <= 2 * 32 * 8 * 16 + 2 * 32 * 16
    assert info.flops == info.rows[0].flops >= sum(r.flops for r in info.rows[1:]) - 1e-9
    assert info.batch_size == 32 and info.flops_per_example == info.flops / 32
    assert printed == [str(info)]
    assert "FLOPs" in printed[0] and "per batch of 32" in printed[0]


def test_nothing_is_allocated():
    # 10^10 parameters (40 GB) would not fit: the summary only looks at shapes
    model = fn.serial(fn.Dense(100_000), fn.Dense(100_000))
    info = summary(model, _spec(8, 100_000), print_fn=None, flops=False)
    assert info.params == 2 * (100_000 * 100_000 + 100_000)
    assert info.flops is None and info.flops_per_example is None
    assert "FLOPs" not in str(info)


def test_combinators_are_expanded_with_correct_shapes(key):
    model = fn.serial(
        fn.Conv(4, (3, 3)),
        fn.BatchNorm(),
        fn.residual(fn.Conv(4, (3, 3), padding="SAME"), jax.nn.relu),
        fn.Flatten(),
        fn.concat(fn.Dense(3), fn.Dense(5)),
        fn.fanout(fn.Dense(2), fn.Dense(6)),
        fn.parallel(fn.Dense(6), jnp.tanh),
        lambda pair: pair[0] + pair[1],
        fn.serial(encoder=fn.Dense(4), decoder=fn.Dense(2)),
    )
    x = _spec(2, 6, 6, 3)
    info = summary(model, x, print_fn=None, flops=False)
    rows = {r.path: r for r in info.rows}
    assert list(rows) == [
        "", "0", "1", "2", "2/0", "2/1", "3", "4", "4/0", "4/1", "5", "5/0", "5/1",
        "6", "6/0", "6/1", "7", "8", "8/encoder", "8/decoder",
    ]  # fmt: skip
    assert rows["2/0"].depth == 2 and rows["2/0"].description == "Conv(4, (3, 3))"
    assert rows["1"].state == 8 and info.state == 8 and info.state_bytes == 32
    assert rows["4"].output.shape == (2, 8) and rows["4/1"].output.shape == (2, 5)
    assert [o.shape for o in rows["5"].output] == [(2, 2), (2, 6)]
    assert rows["6/1"].output.shape == (2, 6)
    assert rows["8/decoder"].output.shape == (2, 2)
    # every row's output is what the layer really gives on that input
    params, _ = jax.eval_shape(model.init, key, x)
    assert rows[""].output == output_spec(model, x)
    h = output_spec(model.children[0], x)
    h = output_spec(model.children[1], h)
    assert rows["2"].output == output_spec(model.children[2], h) == h
    # parents count their children's parameters
    for parent in ("2", "4", "5", "6", "8"):
        kids = [r for p, r in rows.items() if p.startswith(parent + "/")]
        assert rows[parent].params == sum(r.params for r in kids)
    assert info.params == param_count(params)


def test_repeat_shows_one_block_and_counts_its_loop(key):
    block = fn.serial(fn.Dense(8), jnp.tanh)
    model = fn.serial(fn.repeat(block, 4), fn.Dense(2))
    info = summary(model, _spec(3, 8), print_fn=None)
    repeat_row, block_row = info.rows[1], info.rows[2]
    assert repeat_row.description == "repeat(n=4)" and repeat_row.params == 4 * 72
    assert block_row.description == "serial (one of 4)" and block_row.params == 72
    assert block_row.path == "0" and info.rows[3].path == "0/0"
    # XLA counts a loop body once; the summary multiplies it by the number of copies
    assert repeat_row.flops == pytest.approx(4 * block_row.flops)
    assert info.flops >= repeat_row.flops + info.rows[-1].flops - 1e-9


def test_other_combinators_are_one_row(key):
    tied = fn.shared(fn.Dense(4), lambda d: fn.serial(d, jnp.tanh, d))
    info = summary(tied, _spec(2, 4), print_fn=None, flops=False)
    assert len(info.rows) == 1
    assert info.rows[0].description.startswith("shared(serial(")
    assert len(info.rows[0].description) <= 48
    assert info.rows[0].params == 20 and info.rows[0].output.shape == (2, 4)


def test_pytree_inputs_and_plain_functions():
    model = fn.serial(lambda d: d["a"] * d["b"], fn.Dense(2))
    inputs = {"a": np.zeros((5, 3), np.float32), "b": np.ones((5, 3), np.float32)}
    info = summary(model, inputs, print_fn=None)
    assert info.batch_size == 5 and info.rows[2].output.shape == (5, 2)
    scalar = summary(jnp.sin, jnp.zeros(()), print_fn=None)
    assert scalar.batch_size is None and scalar.flops_per_example == scalar.flops


def test_param_count_and_flops_of():
    assert param_count({"w": jnp.zeros((3, 4)), "b": _spec(4), "n": 2.0}) == 17
    assert param_count(jax.random.split(jax.random.key(0), 3)) == 3
    assert param_count(()) == 0
    assert _flops_of({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
    assert _flops_of([{"flops": 4.0}, {"flops": 6.0}]) == 10.0  # older jax: a list
    assert _flops_of({"transcendentals": 4.0}) == 0.0
    assert _flops_of(None) is None and _flops_of([]) is None


def test_summary_errors():
    with pytest.raises(TypeError, match=r"`print_fn` must be a function such as `print`.*got str"):
        summary(fn.Dense(2), _spec(1, 3), print_fn="stdout")
    with pytest.raises(TypeError, match=r"summary: `inputs` has no arrays"):
        summary(fn.Dense(2), {}, print_fn=None)
    with pytest.raises(TypeError, match=r"param_count: expected a pytree of arrays .* type str"):
        param_count({"w": "weights"})
