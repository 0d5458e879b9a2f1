"""A Hugging Face GPT-2 checkpoint in funcnet: same logits, same greedy generation.

Nothing is downloaded. A small GPT-2 is built locally with ``transformers``
(``AutoModelForCausalLM.from_config``, random weight matrices drawn with
standard deviation 0.3 so that the greedy choice of each token is clear-cut) and
written with ``save_pretrained``, as any checkpoint folder on disk would be.
funcnet then reads that folder (``config.json`` + safetensors) with
:func:`funcnet.interop.hf.from_pretrained`, which builds the reference GPT-2
of :mod:`funcnet.interop.models` out of ordinary funcnet layers and loads the
weights, and the two models are compared:

1. the logits of a batch of prompts (float32; they agree to about 1e-6), and
2. greedy generation: ``transformers``' ``generate(do_sample=False)`` against
   :func:`funcnet.generate` with ``temperature=0`` (KV cache, one compiled
   program), token for token.

Run (about 20 seconds on a 2-core CPU, mostly imports and compilation)::

    python examples/hf_gpt2.py
    python examples/hf_gpt2.py --layers 4 --width 128 --new-tokens 40
    python examples/hf_gpt2.py --folder /path/to/a/local/gpt2   # your own checkpoint

It ends with ``logits max abs difference vs transformers: 0.000006..., share
of identical greedy generations: 1.00``. A real checkpoint works the same way
once it is on disk (e.g. fetched with ``huggingface-cli download gpt2
--local-dir gpt2``): ``--folder`` loads it instead of building one.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax.numpy as jnp
import numpy as np
import torch
import transformers

import funcnet as fn
from funcnet.interop import hf


def build_checkpoint(folder: str, *, layers: int, width: int, heads: int, seed: int) -> None:
    """A random-weight GPT-2 written with ``save_pretrained`` into ``folder``."""
    config = transformers.GPT2Config(
        vocab_size=500,
        n_positions=128,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():  # matrices only: LayerNorms keep scale 1, bias 0
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(folder)


def main(
    folder: str | None = None,
    *,
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    new_tokens: int = 24,
    seed: int = 0,
) -> dict:
    """Compare funcnet with ``transformers`` on one checkpoint folder; returns the numbers."""
    if folder is None:
        folder = tempfile.mkdtemp(prefix="hf_gpt2_")
        build_checkpoint(folder, layers=layers, width=width, heads=heads, seed=seed)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).float().eval()

    start = time.perf_counter()
    model, params, state, config = hf.from_pretrained(folder)
    seconds = time.perf_counter() - start
    print(
        f"loaded {config['model_type']} from {folder}: {fn.param_count(params)} parameters, "
        f"{seconds:.1f} s"
    )

    prompts = np.random.default_rng(seed).integers(1, config["vocab_size"], (2, 8))
    with torch.no_grad():
        want = theirs(torch.from_numpy(prompts)).logits.numpy()
    got, _ = model.apply(params, state, jnp.asarray(prompts, jnp.int32))
    diff = float(np.max(np.abs(np.asarray(got) - want)))

    with torch.no_grad():
        out = theirs.generate(
            torch.from_numpy(prompts),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
        )
    their_tokens = out[:, prompts.shape[1] :].numpy()
    mine = fn.generate(
        model,
        params,
        state,
        jnp.asarray(prompts, jnp.int32),
        max_new_tokens=new_tokens,
        temperature=0.0,
    )
    mine = np.asarray(mine)
    same = int((mine == their_tokens).all(axis=1).sum())
    print("funcnet     :", mine[0].tolist())
    print("transformers:", their_tokens[0].tolist())
    print(f"greedy generations identical: {same} of {len(prompts)} rows")
    print(
        f"logits max abs difference vs transformers: {diff:.9f}, share of identical greedy "
        f"generations: {same / len(prompts):.2f}"
    )
    return {"logits_diff": diff, "same_rows": same, "rows": len(prompts)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--folder", help="a local Hugging Face GPT-2 folder (unset: build a random one)"
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="blocks of the built model (--smoke: 1)"
    )
    parser.add_argument(
        "--width",
        type=int,
        default=64,
        help="embedding width of the built model, a multiple of --heads (--smoke: 32)",
    )
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the built model")
    parser.add_argument(
        "--new-tokens",
        type=int,
        default=24,
        help="tokens generated greedily after each prompt (--smoke: 8)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the built model's weights and the prompts"
    )
    parser.add_argument("--smoke", action="store_true", help="a smaller model, 8 new tokens")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.width, args.new_tokens = 1, 32, 8
    main(
        args.folder,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        new_tokens=args.new_tokens,
        seed=args.seed,
    )
