"""funcnet.interop: PyTorch state_dicts <-> funcnet params, checked against torch itself.

Every layer kind round-trips torch -> funcnet -> torch: the funcnet model gives
the torch module's outputs and gradients (w.r.t. inputs and params), and the
exported state_dict loads into a fresh torch module with ``strict=True`` and
gives the same outputs again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import interop
from funcnet.interop import Entry, InteropError

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL, ATOL = 1e-5, 1e-5  # outputs, float32
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """Compare in true float32 (on GPUs XLA's default matmul precision may be TF32)."""
    with jax.default_matmul_precision("highest"):
        yield


def _randomize(module, seed: int = 0):
    """Non-trivial values everywhere (norm scales and biases, running statistics)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return module.eval()


class Case(NamedTuple):
    make_torch: Callable[[], Any]
    make_model: Callable[[], fn.Layer]
    x_shape: tuple
    channels: bool = False  # torch (N, C, *S) <-> funcnet (N, *S, C)
    rename: dict | None = None
    forward: Callable = lambda m, x: m(x)  # the torch call
    inputs: Callable = lambda x: x  # funcnet inputs from the (funcnet-layout) array
    output: Callable = lambda y: y  # funcnet outputs -> one array
    ids: int = 0  # > 0: integer inputs below this (no input gradient)


_rng = np.random.default_rng(0)
MEMORY = _rng.normal(size=(2, 4, 6)).astype(np.float32)
MEMORY8 = _rng.normal(size=(2, 4, 8)).astype(np.float32)
VALID = np.arange(5) < np.array([[5], [3]])  # (2, 5) key padding, True = attend
CAUSAL = nn.Transformer.generate_square_subsequent_mask(5)


CASES = {
    "linear": Case(lambda: nn.Linear(5, 3), lambda: fn.Dense(3), (4, 5)),
    "linear_no_bias": Case(
        lambda: nn.Linear(5, 3, bias=False), lambda: fn.Dense(3, use_bias=False), (2, 3, 5)
    ),
    "sequential": Case(
        lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)),
        lambda: fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(2)),
        (4, 5),
    ),
    "conv1d": Case(
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1),
        lambda: fn.Conv(6, 3, strides=2, padding=1),
        (2, 4, 9),
        channels=True,
    ),
    "conv2d_groups_dilation": Case(
        lambda: nn.Conv2d(4, 6, (3, 2), padding=1, dilation=(1, 2), groups=2),
        lambda: fn.Conv(6, (3, 2), padding=1, dilation=(1, 2), groups=2),
        (2, 4, 7, 8),
        channels=True,
    ),
    "conv3d_no_bias": Case(
        lambda: nn.Conv3d(2, 3, 2, bias=False),
        lambda: fn.Conv(3, 2, padding="VALID", use_bias=False),
        (1, 2, 4, 5, 4),
        channels=True,
    ),
    "conv_transpose1d": Case(
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2),
        lambda: fn.ConvTranspose(6, 3, strides=2, padding="VALID"),
        (2, 4, 5),
        channels=True,
    ),
    "conv_transpose2d_groups_output_padding": Case(
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        lambda: fn.ConvTranspose(6, 3, strides=2, padding=((1, 0), (1, 0)), groups=2),
        (2, 4, 5, 5),
        channels=True,
    ),
    "conv_transpose3d": Case(
        lambda: nn.ConvTranspose3d(2, 2, 2, stride=2),
        lambda: fn.ConvTranspose(2, 2, strides=2, padding="VALID"),
        (1, 2, 3, 3, 3),
        channels=True,
    ),
    "batch_norm1d": Case(lambda: nn.BatchNorm1d(5), fn.BatchNorm, (8, 5)),
    "batch_norm2d": Case(lambda: nn.BatchNorm2d(3), fn.BatchNorm, (2, 3, 4, 4), channels=True),
    "layer_norm": Case(lambda: nn.LayerNorm(6), fn.LayerNorm, (2, 3, 6)),
    "layer_norm_2d": Case(
        lambda: nn.LayerNorm((3, 6), eps=1e-6),
        lambda: fn.LayerNorm(axis=(-2, -1), epsilon=1e-6),
        (2, 3, 6),
    ),
    "group_norm": Case(
        lambda: nn.GroupNorm(2, 4), lambda: fn.GroupNorm(2), (2, 4, 3, 3), channels=True
    ),
    "rms_norm": Case(lambda: nn.RMSNorm(6, eps=1e-6), lambda: fn.RMSNorm(epsilon=1e-6), (2, 3, 6)),
    "embedding": Case(lambda: nn.Embedding(10, 4), lambda: fn.Embedding(10, 4), (2, 5), ids=10),
    "lstm_2_layers": Case(
        lambda: nn.LSTM(3, 5, num_layers=2, batch_first=True),
        lambda: fn.serial(fn.RNN(fn.LSTMCell(5)), fn.RNN(fn.LSTMCell(5))),
        (2, 6, 3),
        rename={"0": "", "1": ""},
        forward=lambda m, x: m(x)[0],
    ),
    "lstm_bidirectional_2_layers": Case(
        lambda: nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True),
        lambda: fn.serial(
            fn.Bidirectional(fn.RNN(fn.LSTMCell(4))), fn.Bidirectional(fn.RNN(fn.LSTMCell(4)))
        ),
        (2, 5, 3),
        rename={"0": "", "1": ""},
        forward=lambda m, x: m(x)[0],
    ),
    "gru_bidirectional_2_layers": Case(
        lambda: nn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True),
        lambda: fn.serial(
            fn.Bidirectional(fn.RNN(fn.GRUCell(4))), fn.Bidirectional(fn.RNN(fn.GRUCell(4)))
        ),
        (2, 5, 3),
        rename={"0": "", "1": ""},
        forward=lambda m, x: m(x)[0],
    ),
    "rnn_tanh": Case(
        lambda: nn.RNN(3, 4, batch_first=True),
        lambda: fn.RNN(fn.SimpleRNNCell(4)),
        (2, 5, 3),
        forward=lambda m, x: m(x)[0],
    ),
    "multihead_attention_padding_mask": Case(
        lambda: nn.MultiheadAttention(8, 2, batch_first=True),
        lambda: fn.MultiHeadAttention(2),
        (2, 5, 8),
        forward=lambda m, x: m(x, x, x, key_padding_mask=torch.from_numpy(~VALID))[0],
        inputs=lambda x: {"x": x, "mask": jnp.asarray(VALID)},
    ),
    "multihead_attention_kdim_vdim": Case(
        lambda: nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True),
        lambda: fn.MultiHeadAttention(2),
        (2, 5, 8),
        forward=lambda m, x: m(x, torch.from_numpy(MEMORY), torch.from_numpy(MEMORY))[0],
        inputs=lambda x: {"x": x, "memory": jnp.asarray(MEMORY)},
    ),
    "multihead_attention_no_bias": Case(
        lambda: nn.MultiheadAttention(8, 4, bias=False, batch_first=True),
        lambda: fn.MultiHeadAttention(4, use_bias=False),
        (2, 5, 8),
        forward=lambda m, x: m(x, x, x, need_weights=False)[0],
    ),
    "transformer_encoder_layer_post_relu": Case(
        lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        lambda: fn.TransformerEncoderBlock(2, mlp_ratio=2, norm="post", activation=jax.nn.relu),
        (2, 5, 8),
    ),
    "transformer_encoder_layer_pre_gelu_masked": Case(
        lambda: nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.0, activation="gelu", norm_first=True, batch_first=True
        ),
        lambda: fn.TransformerEncoderBlock(2, mlp_ratio=2),
        (2, 5, 8),
        forward=lambda m, x: m(x, src_key_padding_mask=torch.from_numpy(~VALID)),
        inputs=lambda x: {"x": x, "mask": jnp.asarray(VALID)},
        output=lambda y: y["x"],
    ),
    "transformer_encoder_stack": Case(
        lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                8, 2, 16, dropout=0.0, activation="gelu", norm_first=True, batch_first=True
            ),
            2,
            norm=nn.LayerNorm(8),
            enable_nested_tensor=False,
        ),
        lambda: fn.transformer_encoder(2, 2, mlp_ratio=2),
        (2, 5, 8),
        rename={"0": "layers", "1": "norm"},
    ),
    "transformer_decoder_layer_post": Case(
        lambda: nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
        lambda: fn.TransformerDecoderBlock(2, mlp_ratio=2, norm="post", activation=jax.nn.relu),
        (2, 5, 8),
        forward=lambda m, x: m(x, torch.from_numpy(MEMORY8), tgt_mask=CAUSAL, tgt_is_causal=True),
        inputs=lambda x: {"x": x, "memory": jnp.asarray(MEMORY8)},
        output=lambda y: y["x"],
    ),
}


def _torch_run(case: Case, module, x: np.ndarray, r: np.ndarray | None):
    """Outputs, input gradient (both in funcnet's layout) and param grads of the torch module."""
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy() if case.channels else x)
    xt.requires_grad_(not case.ids)
    module.zero_grad()
    y = case.forward(module, xt)
    y = torch.movedim(y, 1, -1) if case.channels else y
    if r is None:
        return y.detach().numpy(), None, {}
    (y * torch.from_numpy(r)).sum().backward()
    dx = None
    if not case.ids:
        dx = np.moveaxis(xt.grad.numpy(), 1, -1) if case.channels else xt.grad.numpy()
    grads = {n: p.grad.numpy().copy() for n, p in module.named_parameters()}
    return y.detach().numpy(), dx, grads


def _funcnet_run(case: Case, model, params, state, x: np.ndarray, r: np.ndarray):
    """Outputs, input gradient and param gradients of the funcnet model (one jitted call)."""

    def loss(p, x, r):
        y, _ = model.apply(p, state, case.inputs(x))
        return jnp.sum(case.output(y) * r), case.output(y)

    argnums = (0,) if case.ids else (0, 1)
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(params, x, r)
    return np.asarray(y), (None if case.ids else np.asarray(grads[1])), grads[0]


def _input(case: Case) -> np.ndarray:
    rng = np.random.default_rng(1)
    if case.ids:
        return rng.integers(0, case.ids, case.x_shape).astype(np.int32)
    shape = case.x_shape
    if case.channels:  # the funcnet layout
        shape = (shape[0], *shape[2:], shape[1])
    return rng.normal(size=shape).astype(np.float32)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_outputs_and_gradients(name):
    case = CASES[name]
    torch.manual_seed(0)
    module = _randomize(case.make_torch())
    model = case.make_model()
    x = _input(case)
    params, state = interop.from_torch(
        model, case.inputs(x), module.state_dict(), rename=case.rename
    )

    y_t, _, _ = _torch_run(case, module, x, None)
    r = np.random.default_rng(2).normal(size=y_t.shape).astype(np.float32)
    y_t, dx_t, grads_t = _torch_run(case, module, x, r)
    y_f, dx_f, gp_f = _funcnet_run(case, model, params, state, x, r)
    np.testing.assert_allclose(y_f, y_t, rtol=RTOL, atol=ATOL)
    if dx_t is not None:
        np.testing.assert_allclose(dx_f, dx_t, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    g_f = interop.to_torch(model, gp_f, state, rename=case.rename, as_numpy=True)
    for n, g in grads_t.items():
        mine = g_f[n]
        if "bias_hh" in n and not np.any(mine):  # LSTM/RNN: funcnet's one `b` went to bias_ih
            mine = g_f[n.replace("bias_hh", "bias_ih")]
        np.testing.assert_allclose(mine, g, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=n)

    # ... and back: a fresh torch module loads the export strictly and gives the same outputs
    exported = interop.to_torch(model, params, state, rename=case.rename)
    torch.manual_seed(1)
    fresh = case.make_torch().eval()
    fresh.load_state_dict(exported, strict=True)
    y_back, _, _ = _torch_run(case, fresh, x, r)
    np.testing.assert_allclose(y_back, y_t, rtol=RTOL, atol=ATOL)
    original = module.state_dict()
    for n, a in exported.items():  # the same tensors, except the summed LSTM/RNN biases
        if "bias_ih" not in n and "bias_hh" not in n:
            np.testing.assert_array_equal(a.numpy(), original[n].numpy(), err_msg=n)


# ---------------------------------------------------------------------------------------------
# BatchNorm in training mode: the momentum and variance conventions


def test_batch_norm_training_conventions():
    torch.manual_seed(0)
    module = _randomize(nn.BatchNorm1d(5, momentum=0.1)).train()
    model = fn.BatchNorm(momentum=0.9)  # the weight of the old statistics
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    params, state = interop.from_torch(model, x, module.state_dict())
    y_f, new_state = model.apply(params, state, x, train=True)
    y_t = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y_f, y_t, rtol=RTOL, atol=ATOL)  # both normalize with biased var
    np.testing.assert_allclose(new_state["mean"], module.running_mean.numpy(), rtol=1e-6)
    # torch keeps the unbiased batch variance in its running average, funcnet the biased one
    batch_var = x.var(axis=0)
    n = x.shape[0]
    torch_var = np.asarray(new_state["var"]) + 0.1 * batch_var * (n / (n - 1) - 1)
    np.testing.assert_allclose(torch_var, module.running_var.numpy(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Mappings: defaults, renames, edits


def test_default_names_follow_sequential_indices_and_keywords():
    body = fn.serial(fn.Conv(4, 3), fn.BatchNorm(), jax.nn.relu)
    model = fn.serial(features=body, pool=fn.GlobalAvgPool(), head=fn.Dense(2))
    mapping = interop.torch_mapping(model, jnp.zeros((1, 8, 8, 3)))
    assert {p: (e.kind, e.torch) for p, e in mapping.items()} == {
        "features/0": ("conv", "features.0"),
        "features/1": ("batch_norm", "features.1"),
        "head": ("linear", "head"),
    }
    enc = interop.torch_mapping(
        fn.transformer_encoder(2, 2), jnp.zeros((1, 3, 8)), rename={"0": "layers"}
    )
    assert enc["0/attention/1"] == Entry("multihead_attention", "layers.{i}.self_attn", stack=2)
    assert enc["1"] == Entry("layer_norm", "1")


def test_edited_mapping_is_used():
    module = _randomize(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))
    sd = {f"net.{k}": v for k, v in module.state_dict().items()}
    model = fn.serial(fn.Dense(3), fn.Dense(2))
    mapping = interop.torch_mapping(model, jnp.zeros((1, 4)))
    mapping = {p: e._replace(torch=f"net.{e.torch}") for p, e in mapping.items()}
    params, state = interop.from_torch(model, jnp.zeros((1, 4)), sd, mapping=mapping)
    x = np.ones((2, 4), np.float32)
    y = model.apply(params, state, x)[0]
    np.testing.assert_allclose(y, module(torch.from_numpy(x)).detach().numpy(), atol=ATOL)
    assert set(interop.to_torch(model, params, state, mapping=mapping)) == set(sd)


def test_rename_of_an_unknown_path_is_an_error():
    with pytest.raises(ValueError, match=r"`rename` names \['3'\].*layers with params are at"):
        interop.torch_mapping(fn.serial(fn.Dense(2)), jnp.zeros((1, 4)), rename={"3": "fc"})


def test_mapping_and_rename_together_are_refused():
    model = fn.Dense(2)
    with pytest.raises(ValueError, match="either `mapping` or `rename`"):
        interop.from_torch(model, jnp.zeros((1, 4)), {}, mapping={}, rename={})


def test_unknown_layers_copy_their_leaf_names():
    def init(key, x):
        return {"scale": jnp.ones(x.shape[-1:])}, ()

    def apply(params, state, x, *, key=None, train=False):
        return x * params["scale"], state

    model = fn.serial(fn.Layer(init, apply, "Scale"), fn.Dense(2))
    sd = {
        "0.scale": np.full(3, 2.0, np.float32),
        "1.weight": np.ones((2, 3)),
        "1.bias": np.zeros(2),
    }
    assert interop.torch_mapping(model, jnp.zeros((1, 3)))["0"] == Entry("copy", "0")
    params, _ = interop.from_torch(model, jnp.zeros((1, 3)), sd)
    np.testing.assert_array_equal(params[0]["scale"], [2.0, 2.0, 2.0])


# ---------------------------------------------------------------------------------------------
# Errors: everything reported at once, with the fix


def test_missing_unexpected_and_misshaped_tensors_are_reported_together():
    model = fn.serial(fn.Dense(3), jax.nn.relu, fn.Dense(2), fn.BatchNorm())
    sd = {k: v.numpy() for k, v in _randomize(nn.Linear(4, 3)).state_dict().items()}
    sd = {
        "0.weight": sd["weight"],
        "2.weight": np.zeros((2, 5), np.float32),  # mis-shaped: (2, 3) expected
        "3.weight": np.ones(2, np.float32),
        "3.bias": np.zeros(2, np.float32),
        "3.running_mean": np.zeros(2, np.float32),
        "extra.weight": np.zeros(1, np.float32),  # unexpected
    }  # missing: 0.bias, 2.bias, 3.running_var (num_batches_tracked is optional)
    with pytest.raises(InteropError) as info:
        interop.from_torch(model, jnp.zeros((1, 4)), sd)
    report, message = info.value.report, str(info.value)
    assert [m.split(" ")[0] for m in report.missing] == ["0.bias", "2.bias", "3.running_var"]
    assert report.unexpected == ["extra.weight (1,)"]
    assert report.mismatched == ["2.weight: expected (2, 3), got (2, 5) (for funcnet `2`, linear)"]
    assert "3 missing, 1 unexpected, 1 mismatched" in message and "Fix:" in message
    assert "0.bias (for funcnet `0`, linear, shape (3,))" in message
    # ignore= silences the unexpected one only
    with pytest.raises(InteropError) as info:
        interop.from_torch(model, jnp.zeros((1, 4)), sd, ignore=["extra.*"])
    assert not info.value.report.unexpected and info.value.report.missing


def test_unmapped_params_name_the_entry_to_add():
    model = fn.serial(fn.Dense(4), fn.MultiHeadAttention(2))
    x = jnp.zeros((1, 5, 4))
    mapping = interop.torch_mapping(model, x)
    del mapping["1"]
    with pytest.raises(
        InteropError,
        match=r"params/1/key/b, .*no mapping entry covers them; add "
        r"`mapping\['1'\] = Entry\(kind='multihead_attention', torch='1'",
    ):
        interop.from_torch(
            model, x, {"0.weight": np.zeros((4, 4)), "0.bias": np.zeros(4)}, mapping=mapping
        )


def test_a_kind_that_does_not_fit_is_reported():
    model = fn.serial(fn.Dense(3))
    mapping = {"0": Entry("embedding", "0")}
    with pytest.raises(
        InteropError,
        match=r"unsupported \(1\):\n.*funcnet `0`, embedding: the kind "
        r"does not fit its params \{b, w\}",
    ):
        interop.from_torch(model, jnp.zeros((1, 4)), {}, mapping=mapping)
    with pytest.raises(ValueError, match=r"unknown kind 'dense'; use one of \["):
        interop.from_torch(model, jnp.zeros((1, 4)), {}, mapping={"0": Entry("dense", "0")})
    with pytest.raises(TypeError, match=r"mapping\['0'\] must be an `Entry"):
        interop.from_torch(model, jnp.zeros((1, 4)), {}, mapping={"0": "fc"})


def test_grouped_query_attention_cannot_be_exported_to_torch():
    model = fn.MultiHeadAttention(4, num_kv_heads=2)
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3, 8)))
    with pytest.raises(
        InteropError,
        match=r"funcnet `` \(multihead_attention\): torch attention "
        r"needs num_kv_heads == num_heads",
    ):
        interop.to_torch(model, params, state, as_numpy=True)


def test_conv_transpose_groups_come_from_the_layer():
    model = fn.ConvTranspose(6, 3, groups=3)
    assert interop.torch_mapping(model, jnp.zeros((1, 5, 5, 6)))[""].groups == 3
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 5, 5, 6)))
    sd = interop.to_torch(model, params, state)
    assert tuple(sd["weight"].shape) == (6, 2, 3, 3)  # torch (C, F // G, *k)
    with pytest.raises(InteropError, match=r"weight: expected \(2, 6, 3, 3\), got \(6, 2, 3, 3\)"):
        interop.from_torch(
            model, jnp.zeros((1, 5, 5, 6)), sd, mapping={"": Entry("conv_transpose", "")}
        )
    back, _ = interop.from_torch(model, jnp.zeros((1, 5, 5, 6)), sd)
    np.testing.assert_array_equal(back["w"], params["w"])


def test_values_are_cast_to_the_params_dtype_and_bfloat16_tensors_are_read():
    module = nn.Linear(4, 3).to(torch.bfloat16)
    params, _ = interop.from_torch(fn.Dense(3), jnp.zeros((1, 4)), module.state_dict())
    assert params["w"].dtype == jnp.float32
    want = module.weight.detach().float().numpy().T
    np.testing.assert_array_equal(params["w"], want)
    bf16 = fn.Dense(3, param_dtype=jnp.bfloat16)
    p16, _ = interop.from_torch(bf16, jnp.zeros((1, 4)), module.state_dict())
    sd = interop.to_torch(bf16, p16, ())
    assert sd["weight"].dtype == torch.bfloat16
    assert torch.equal(sd["weight"], module.weight.detach())


def test_funcnet_does_not_import_torch():
    import subprocess
    import sys

    code = "import funcnet, funcnet.interop, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# A torchvision-layout ResNet (torchvision is not needed: the same modules, written out)


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.downsample = nn.Sequential(conv, nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):  # torchvision.models.ResNet's names, two stages of one block
    def __init__(self, widths=(8, 16), num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(TorchBasicBlock(widths[0], widths[0], 1))
        self.layer2 = nn.Sequential(TorchBasicBlock(widths[0], widths[1], 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(x, 1))


def test_resnet_from_a_torchvision_layout_state_dict():
    from funcnet.interop.models import resnet

    torch.manual_seed(0)
    module = _randomize(TorchResNet())
    model = resnet((1, 1), (8, 16), num_classes=5)
    images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    x = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    params, state = interop.from_torch(model, x, module.state_dict())  # the default mapping
    with torch.no_grad():
        want = module(torch.from_numpy(images)).numpy()
    got, _ = jax.jit(model.apply)(params, state, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    fresh = TorchResNet().eval()
    fresh.load_state_dict(interop.to_torch(model, params, state), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(torch.from_numpy(images)).numpy(), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# More refusals: each says what and how to fix it


def test_custom_kinds_and_what_they_may_not_do():
    double = interop.Kind(
        export=lambda p, s, e: {"weight": p["w"].T / 2, "bias": p["b"]},
        load=lambda get, p, s, e: ({"w": get("weight").T * 2, "b": get("bias")}, s),
    )
    model, x = fn.Dense(3), jnp.zeros((1, 4))
    params, state = model.init(jax.random.key(0), x)
    sd = interop.to_torch(model, params, state, mapping={"": Entry(double, "")}, as_numpy=True)
    np.testing.assert_allclose(sd["weight"], np.asarray(params["w"]).T / 2)
    back, _ = interop.from_torch(model, x, sd, mapping={"": Entry(double, "")})
    np.testing.assert_allclose(back["w"], params["w"])
    broken = double._replace(load=lambda get, p, s, e: ({"w": get("weight"), "b": get("bias")}, s))
    with pytest.raises(
        InteropError,
        match=r"params/w: the kind made shape \(3, 4\), expected "
        r"\(4, 3\)\nFix the custom `Kind`'s `load`",
    ):
        interop.from_torch(model, x, sd, mapping={"": Entry(broken, "")})


def test_mapping_errors_of_to_torch():
    model = fn.serial(fn.Dense(3), fn.Dense(3))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    twice = {"0": Entry("linear", "fc"), "1": Entry("linear", "fc")}
    with pytest.raises(
        InteropError,
        match=r"fc.weight: written by two mapping entries \(one is "
        r"`1`\)",
    ):
        interop.to_torch(model, params, state, mapping=twice, as_numpy=True)
    with pytest.raises(
        InteropError,
        match=r"unmapped \(1\):\n    params/1/b, params/1/w: no "
        r"mapping entry covers them; add `mapping\['1'\] = Entry\(kind='linear'",
    ):
        interop.to_torch(model, params, state, mapping={"0": Entry("linear", "0")}, as_numpy=True)
    with pytest.raises(TypeError, match=r"`mapping` must be a dict \{funcnet_path: Entry\}"):
        interop.to_torch(model, params, state, mapping=[("0", "fc")], as_numpy=True)
    up = fn.ConvTranspose(6, 3)
    p, s = up.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(InteropError, match=r"`groups=4` does not divide the 6 output channels"):
        interop.to_torch(up, p, s, mapping={"": Entry("conv_transpose", "", groups=4)})


def test_nested_repeats_need_a_hand_written_mapping():
    model = fn.repeat(fn.repeat(fn.Dense(4), 2), 3)
    with pytest.raises(
        ValueError, match=r"`` is a `repeat` inside a `repeat`; give the mapping by"
    ):
        interop.torch_mapping(model, jnp.zeros((1, 4)))


def test_reference_model_configs_are_checked():
    from funcnet.interop.models import bert, gpt2, resnet

    base = {"vocab_size": 11, "n_positions": 8, "n_embd": 4, "n_layer": 1, "n_head": 2}
    with pytest.raises(
        ValueError, match=r"`scale_attn_by_inverse_layer_idx=True` is not supported"
    ):
        gpt2({**base, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(ValueError, match=r"`activation_function='mish'` is not supported; supp"):
        gpt2({**base, "activation_function": "mish"})
    with pytest.raises(TypeError, match="expected a config dict"):
        gpt2(["n_embd", 4])
    config = {
        "vocab_size": 9,
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 5,
    }
    with pytest.raises(ValueError, match=r"`position_embedding_type='relative_key'` is not"):
        bert({**config, "position_embedding_type": "relative_key"})
    model, ids = bert(config), jnp.ones((2, 5), jnp.int32)
    with pytest.raises(fn.LayerError, match=r"longer than `max_position_embeddings=5`"):
        model.init(jax.random.key(0), jnp.ones((2, 6), jnp.int32))
    with pytest.raises(fn.LayerError, match=r"got keys \['attention_mask', 'x'\]"):
        model.init(jax.random.key(0), {"x": ids, "attention_mask": ids})
    with pytest.raises(fn.LayerError, match=r"expected 'mask' of the ids' shape \(2, 5\), got"):
        model.init(jax.random.key(0), {"x": ids, "mask": jnp.ones((2, 4), bool)})
    with pytest.raises(fn.LayerError, match=r"expected integer token ids \(N, T\), got float32"):
        model.init(jax.random.key(0), jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"one entry per stage, got \(1, 1\) and \(8,\)"):
        resnet((1, 1), (8,))
