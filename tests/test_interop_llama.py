"""funcnet.interop.models.llama against ``transformers``' ``LlamaForCausalLM`` on the same weights.

Tiny Llama models with random weights, grouped-query attention and tied or
untied embeddings are built locally and written with ``save_pretrained``
(nothing is downloaded); :func:`funcnet.interop.hf.from_pretrained` reads
them and must give the same logits (float32, ~1e-4) and the same greedy
generations, token for token, decoding with the KV cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import interop
from funcnet.interop import hf
from funcnet.interop.models import llama, llama_mapping

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4

LLAMA = {
    "vocab_size": 67,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention: 2 query heads per key/value head
    "max_position_embeddings": 32,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": None,
    "pad_token_id": 0,
}


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """Compare in true float32 (on GPUs XLA's default matmul precision may be TF32)."""
    with jax.default_matmul_precision("highest"):
        yield


def _llama(folder, **overrides):
    config = transformers.LlamaConfig(**{**LLAMA, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # far from HF's tiny init, so a wrong split, transpose or rotation shows
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.eval().save_pretrained(folder)
    return model


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(1, LLAMA["vocab_size"], shape).astype(np.int32)


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": False, "rope_theta": 500.0},
        {"tie_word_embeddings": True, "num_key_value_heads": 1, "head_dim": 6},
    ],
    ids=["untied-gqa", "tied-mqa-head_dim"],
)
def test_llama_logits_and_greedy_generation_match_transformers(tmp_path, overrides):
    theirs = _llama(tmp_path, **overrides)
    model, params, state, config = hf.from_pretrained(tmp_path)
    assert config["model_type"] == "llama"
    assert ("shared" in params) == overrides["tie_word_embeddings"]
    ids = _ids((2, 11))
    with torch.no_grad():
        want = theirs(torch.from_numpy(ids).long()).logits.numpy()
    got, _ = jax.jit(model.apply)(params, state, jnp.asarray(ids))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)

    prompts = ids[:, :5]
    with torch.no_grad():
        out = theirs.generate(
            torch.from_numpy(prompts).long(),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=10,
            do_sample=False,
        )
    new = fn.generate(  # with the KV cache
        model, params, state, jnp.asarray(prompts), max_new_tokens=10, temperature=0.0
    )
    np.testing.assert_array_equal(np.asarray(new), out[:, 5:].numpy())


def test_llama_export_back_loads_strictly_into_transformers(tmp_path):
    theirs = _llama(tmp_path)
    model, params, state, config = hf.from_pretrained(tmp_path)
    sd = interop.to_torch(model, params, state, mapping=llama_mapping(config))
    fresh = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**LLAMA))
    fresh.eval().load_state_dict(sd, strict=True)
    ids = torch.from_numpy(_ids((1, 7), seed=1)).long()
    with torch.no_grad():
        np.testing.assert_allclose(fresh(ids).logits.numpy(), theirs(ids).logits.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, r"`rope_type='linear'`"),
        ({"hidden_act": "gelu"}, r"`hidden_act='gelu'` is not supported \(only 'silu'\)"),
        ({"partial_rotary_factor": 0.5}, r"`partial_rotary_factor=0.5` is not supported"),
    ],
)
def test_llama_refuses_what_it_does_not_implement(overrides, match):
    with pytest.raises(ValueError, match=match):
        llama({**LLAMA, **overrides})
