"""funcnet.interop.hf and the reference models, against ``transformers`` on the same weights.

The Hugging Face models are built locally from tiny configs with random
weights and written with ``save_pretrained`` (nothing is downloaded); the
funcnet models read those folders and must give the same logits / hidden
states (float32, ~1e-4) and the same greedy generations, token for token.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import interop
from funcnet.checkpoint import CheckpointError
from funcnet.interop import InteropError, hf
from funcnet.interop.models import bert_mapping, gpt2_mapping

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """Compare in true float32 (on GPUs XLA's default matmul precision may be TF32)."""
    with jax.default_matmul_precision("highest"):
        yield


GPT2 = {
    "vocab_size": 61,
    "n_positions": 24,
    "n_embd": 16,
    "n_layer": 2,
    "n_head": 2,
    "bos_token_id": 0,
    "eos_token_id": None,
    "pad_token_id": 0,
}
BERT = {
    "vocab_size": 53,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 24,
    "max_position_embeddings": 12,
    "type_vocab_size": 3,
}


def _randomize(module, std: float = 0.3):
    """Weights far from the initial ones (HF's are tiny), so a wrong split or transpose shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def _gpt2(folder, *, tied=True, shard=None):
    config = transformers.GPT2Config(**GPT2, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = _randomize(transformers.AutoModelForCausalLM.from_config(config))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    return model


def _ids(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(1, vocab, shape).astype(np.int32)


def test_gpt2_logits_and_greedy_generation_match_transformers(tmp_path):
    theirs = _gpt2(tmp_path)
    model, params, state, config = hf.from_pretrained(tmp_path)
    assert config["model_type"] == "gpt2" and "shared" in params  # tied embeddings
    ids = _ids((2, 10), GPT2["vocab_size"])
    with torch.no_grad():
        want = theirs(torch.from_numpy(ids).long()).logits.numpy()
    got, _ = model.apply(params, state, jnp.asarray(ids))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)

    prompts = ids[:, :4]
    with torch.no_grad():
        out = theirs.generate(
            torch.from_numpy(prompts).long(),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
        )
    want_tokens = out[:, 4:].numpy()
    new = fn.generate(  # with the KV cache
        model, params, state, jnp.asarray(prompts), max_new_tokens=8, temperature=0.0
    )
    np.testing.assert_array_equal(np.asarray(new), want_tokens)


def test_gpt2_untied_sharded_checkpoint_and_export_back(tmp_path):
    theirs = _gpt2(tmp_path, tied=False, shard="8KB")
    assert os.path.isfile(tmp_path / hf.INDEX)
    model, params, state, config = hf.from_pretrained(tmp_path)
    ids = _ids((2, 7), GPT2["vocab_size"], seed=1)
    with torch.no_grad():
        want = theirs(torch.from_numpy(ids).long()).logits.numpy()
    got, _ = model.apply(params, state, jnp.asarray(ids))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-4)

    # funcnet -> transformers: a fresh model loads the export strictly and agrees
    sd = interop.to_torch(model, params, state, mapping=gpt2_mapping(config))
    fresh = transformers.AutoModelForCausalLM.from_config(transformers.GPT2Config(**config)).eval()
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
        back = fresh(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(back, want, atol=1e-6)


def _bert_inputs():
    ids = _ids((2, 9), BERT["vocab_size"], seed=2)
    mask = (np.arange(9) < np.array([[9], [5]])).astype(np.int64)  # the second row is padded
    types = np.random.default_rng(3).integers(0, 3, (2, 9))
    return ids, mask, types


def test_bert_hidden_states_and_pooler_match_transformers(tmp_path):
    config = transformers.BertConfig(**BERT)
    torch.manual_seed(0)
    theirs = _randomize(transformers.BertModel(config))
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    model, params, state, _ = hf.from_pretrained(tmp_path)
    ids, mask, types = _bert_inputs()
    with torch.no_grad():
        out = theirs(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    inputs = {
        "x": jnp.asarray(ids),
        "mask": jnp.asarray(mask),
        "token_type_ids": jnp.asarray(types),
    }
    (hidden, pooled), _ = model.apply(params, state, inputs)
    np.testing.assert_allclose(hidden, out.last_hidden_state.numpy(), atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=ATOL, rtol=1e-4)


def test_bert_task_checkpoint_loads_its_base_model(tmp_path):
    config = transformers.BertConfig(**BERT)
    torch.manual_seed(0)
    theirs = _randomize(transformers.BertForMaskedLM(config))
    theirs.save_pretrained(tmp_path)
    model, params, state, config_dict = hf.from_pretrained(tmp_path)  # "bert." prefix, no pooler
    ids, mask, types = _bert_inputs()
    with torch.no_grad():
        want = theirs.bert(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        ).last_hidden_state.numpy()
    inputs = {
        "x": jnp.asarray(ids),
        "mask": jnp.asarray(mask),
        "token_type_ids": jnp.asarray(types),
    }
    assert "pooler" not in params  # BertForMaskedLM has none: the outputs are the encoder's
    out, _ = model.apply(params, state, inputs)
    np.testing.assert_allclose(out["x"], want, atol=ATOL, rtol=1e-4)
    assert bert_mapping(config_dict, "bert", pooler=False)["encoder/attention/0"].torch == (
        "bert.encoder.layer.{i}.attention"
    )
    with pytest.raises(InteropError, match=r"unexpected \(\d+\):\n    cls\.predictions"):
        hf.from_pretrained(tmp_path, strict_heads=True)


# ---------------------------------------------------------------------------------------------
# Reading folders: what is refused, and how it is said


def _write_config(folder, **config):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)


def test_missing_folder_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        hf.read_config(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        hf.read_config(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(
        FileNotFoundError,
        match=r"pickled weights, which funcnet never loads.*"
        r"safe_serialization=True",
    ):
        hf.read_weights(tmp_path)


def test_unsupported_model_type_is_named(tmp_path):
    _write_config(tmp_path, model_type="mistral")
    with pytest.raises(
        InteropError, match=r"'mistral' is not supported; supported: \['bert', 'gpt2', 'llama'\]"
    ):
        hf.from_pretrained(tmp_path)


def test_bad_indexes_and_shards_are_refused(tmp_path):
    _gpt2(tmp_path, shard="8KB")
    index_path = tmp_path / hf.INDEX
    index = json.loads(index_path.read_text())
    shard = next(iter(index["weight_map"].values()))

    index["weight_map"]["transformer.extra"] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(
        InteropError,
        match=r"the index lists tensors its shards lack: "
        r"\['transformer.extra \(in model-",
    ):
        hf.read_weights(tmp_path)

    index["weight_map"]["transformer.extra"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(InteropError, match=r"is not a file name in the folder"):
        hf.read_weights(tmp_path)

    del index["weight_map"]["transformer.extra"]
    index_path.write_text(json.dumps(index))
    (tmp_path / shard).write_bytes((tmp_path / shard).read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        hf.read_weights(tmp_path)
    (tmp_path / shard).unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        hf.read_weights(tmp_path)


def test_weights_that_do_not_fit_the_config_are_listed(tmp_path):
    _gpt2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    _write_config(tmp_path, **{**config, "n_embd": 8})  # the weights are 16 wide
    with pytest.raises(
        InteropError,
        match=r"mismatched \(\d+\):\n    transformer.wte.weight: "
        r"expected \(61, 8\), got \(61, 16\)",
    ):
        hf.from_pretrained(tmp_path)


def test_malformed_config_and_index(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InteropError, match=r"config\.json` is not valid JSON"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(InteropError, match=r"must hold a JSON object, got list"):
        hf.read_config(tmp_path)
    (tmp_path / hf.INDEX).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(InteropError, match=r"needs a \"weight_map\" object"):
        hf.read_weights(tmp_path)
    (tmp_path / hf.INDEX).write_text("{")
    with pytest.raises(InteropError, match=r"index\.json` is not valid JSON"):
        hf.read_weights(tmp_path)
