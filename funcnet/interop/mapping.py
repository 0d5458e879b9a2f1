"""The name mapping: which torch module holds each funcnet layer's params, and how.

A mapping is a plain dict ``{funcnet_path: Entry}``. The path is where the
layer's params sit in the model's params (and state) tree, as
:func:`funcnet.core.path_str` writes it (``"0"``, ``"encoder/attention/1"``;
``""`` for a model that is one layer); the :class:`Entry` names the torch
module (``"features.0"``) and the kind of layer, which fixes the layouts (see
:mod:`funcnet.interop.kinds`). :func:`torch_mapping` makes the default one by
walking the model; print it, edit it, or pass ``rename`` to change the torch
names of whole sub-models.

Default torch names follow the funcnet structure: child ``i`` of a ``serial``
is ``"i"`` and a keyword child is its name, as in ``torch.nn.Sequential`` and
module attributes, so ``serial(Dense(8), relu, Dense(2))`` maps to
``nn.Sequential(nn.Linear(.., 8), nn.ReLU(), nn.Linear(8, 2))`` as it stands.
``repeat`` stacks its copies' params: its torch name gets ``".{i}"`` (an
``nn.ModuleList``), ``i`` the copy. The RNN layers (and each direction of a
``Bidirectional``) that map to the same torch name are the layers of one
multi-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN``, numbered in model order
(``"_l0"``, ``"_l1"``, backward ``"_l0_reverse"``). Transformer blocks map to
``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` names
(``self_attn``, ``linear1``, ``norm1``, ...). A layer funcnet does not know
maps with kind ``"copy"``: its leaves keep their names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from funcnet.core import Layer, as_layer, init_spec
from funcnet.interop.kinds import Kind

__all__ = ["Entry", "layer_paths", "subtree", "torch_mapping"]


class Entry(NamedTuple):
    """Where one funcnet layer's params live in a torch state_dict.

    Attributes:
        kind: the layout, a name in :data:`funcnet.interop.kinds.KINDS`
            (``"linear"``, ``"conv"``, ``"lstm"``, ...) or a :class:`~funcnet.interop.kinds.Kind`.
        torch: the torch module's name in the state_dict (``"features.0"``;
            ``""`` for the root); ``"{i}"`` stands for the copy index of a
            ``repeat``.
        suffix: for recurrent kinds, the torch tensors' suffix (``"_l1_reverse"``).
        stack: the number of copies when the params are stacked by ``repeat``, else 0.
        groups: the ``groups`` of a ``conv_transpose`` (needed to export it).

    Examples:
        >>> Entry("linear", "fc1")
        Entry(kind='linear', torch='fc1', suffix='', stack=0, groups=1)
        >>> Entry("linear", "fc1")._replace(torch="head")
        Entry(kind='linear', torch='head', suffix='', stack=0, groups=1)
    """

    kind: str | Kind
    torch: str
    suffix: str = ""
    stack: int = 0
    groups: int = 1


_LEAVES = (
    (re.compile(r"Dense\("), "linear"),
    (re.compile(r"ConvTranspose\("), "conv_transpose"),
    (re.compile(r"Conv\("), "conv"),
    (re.compile(r"BatchNorm\b"), "batch_norm"),
    (re.compile(r"LayerNorm\b"), "layer_norm"),
    (re.compile(r"GroupNorm\("), "group_norm"),
    (re.compile(r"RMSNorm\b"), "rms_norm"),
    (re.compile(r"(Positional)?Embedding\("), "embedding"),
    (re.compile(r"MultiHeadAttention\("), "multihead_attention"),
)
_RNN = re.compile(r"RNN\((LSTMCell|GRUCell|SimpleRNNCell)\(")
_RNN_KINDS = {"LSTMCell": "lstm", "GRUCell": "gru", "SimpleRNNCell": "rnn"}
_REPEAT = re.compile(r"repeat\(n=(\d+)\)")
_GROUPS = re.compile(r"groups=(\d+)")


def _join(a: str, b: Any, sep: str = ".") -> str:
    return f"{a}{sep}{b}" if a else str(b)


def _has_leaves(tree) -> bool:
    return bool(jax.tree.leaves(tree))


def subtree(tree: Any, path: str) -> Any:
    """The part of ``tree`` at ``path`` (``"0/attention/1"``); ``()`` where it has none.

    Examples:
        >>> subtree(({"w": 1}, {"mlp": ({"b": 2},)}), "1/mlp/0")
        {'b': 2}
        >>> subtree(((), ()), "1/mlp")
        ()
    """
    for part in path.split("/") if path else []:
        if isinstance(tree, Mapping) and part in tree:
            tree = tree[part]
        elif isinstance(tree, (tuple, list)) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return ()
    return tree


def layer_paths(mapping: Mapping[str, Entry], paths: list[str]) -> dict[str, list[str]]:
    """For each mapping key, the leaf ``paths`` it covers (the key itself or below it)."""
    out: dict[str, list[str]] = {k: [] for k in mapping}
    for leaf in paths:
        for key in mapping:
            if key == "" or leaf == key or leaf.startswith(key + "/"):
                out[key].append(leaf)
    return out


class _Walker:
    """Builds the default mapping: one :class:`Entry` per layer with params or state."""

    def __init__(self, rename: Mapping[str, str]):
        self.rename = dict(rename)
        self.used: set[str] = set()
        self.entries: dict[str, Entry] = {}
        self.rnn_layers: dict[str, int] = {}
        self.shared: list[dict] = []

    def walk(self, layer, p, s, path: str, torch: str, stack: int) -> None:
        if path in self.rename and path not in self.used:
            torch = self.rename[path]
            self.used.add(path)
        layer = as_layer(layer)
        if _has_leaves((p, s)) or (self.shared and layer.name.startswith("shared ")):
            self.dispatch(layer, p, s, path, torch, stack)

    def add(self, path: str, entry: Entry) -> None:
        self.entries[path] = entry

    def rnn_index(self, torch: str) -> int:
        i = self.rnn_layers.get(torch, 0)
        self.rnn_layers[torch] = i + 1
        return i

    def dispatch(self, layer: Layer, p, s, path: str, torch: str, stack: int) -> None:
        name, children = layer.name, layer.children
        for pattern, kind in _LEAVES:
            if pattern.match(name):
                groups = _GROUPS.search(name) if kind == "conv_transpose" else None
                self.add(
                    path, Entry(kind, torch, stack=stack, groups=int(groups[1]) if groups else 1)
                )
                return
        if rnn := _RNN.match(name):
            suffix = f"_l{self.rnn_index(torch)}" + ("_reverse" if "reverse=True" in name else "")
            self.add(path, Entry(_RNN_KINDS[rnn[1]], torch, suffix=suffix, stack=stack))
        elif name == "Bidirectional":
            self.bidirectional(children, path, torch, stack)
        elif name.startswith(("TransformerEncoderBlock(", "TransformerDecoderBlock(")):
            self.transformer_block(name, p, path, torch, stack)
        elif repeat := _REPEAT.match(name):
            if stack:
                raise ValueError(
                    f"torch_mapping: `{path}` is a `repeat` inside a `repeat`; give the mapping "
                    "by hand (one Entry per layer, `stack` the outer count)."
                )
            self.dispatch(as_layer(children[0]), p, s, path, _join(torch, "{i}"), int(repeat[1]))
        elif name == "on_x":
            self.dispatch(as_layer(children[0]), p, s, path, torch, stack)
        elif name == "shared" and isinstance(p, Mapping) and set(p) == {"shared", "body"}:
            self.shared.append({"p": p["shared"], "s": _sub(s, "shared"), "path": path})
            self.walk(
                children[0], p["body"], _sub(s, "body"), _join(path, "body", "/"), torch, stack
            )
            self.shared.pop()
        elif name.startswith("shared ") and len(children) == 1 and self.shared:
            slot = self.shared[-1]
            if not slot.get("done"):
                slot["done"] = True
                where = _join(slot["path"], "shared", "/")
                self.walk(children[0], slot["p"], slot["s"], where, torch, stack)
        elif _matches(children, p):
            labels = children.keys() if isinstance(children, Mapping) else range(len(children))
            for label in labels:
                child_path, child_torch = _join(path, label, "/"), _join(torch, label)
                self.walk(
                    children[label], _sub(p, label), _sub(s, label), child_path, child_torch, stack
                )
        else:
            self.add(path, Entry("copy", torch, stack=stack))

    def bidirectional(self, children, path: str, torch: str, stack: int) -> None:
        layer = self.rnn_index(torch)
        for direction, tail in (("forward", ""), ("backward", "_reverse")):
            rnn = _RNN.match(children[direction].name)
            kind = _RNN_KINDS[rnn[1]] if rnn else "copy"
            entry = Entry(kind, torch, suffix=f"_l{layer}{tail}" if rnn else "", stack=stack)
            self.add(_join(path, direction, "/"), entry)

    def transformer_block(self, name: str, p, path: str, torch: str, stack: int) -> None:
        """A block as torch's ``TransformerEncoderLayer`` / ``TransformerDecoderLayer``."""
        if name.startswith("TransformerEncoderBlock"):
            branches = [("attention", "self_attn", "norm1")]
            mlp_norm = "norm2"
        else:
            branches = [
                ("self_attention", "self_attn", "norm1"),
                ("cross_attention", "multihead_attn", "norm2"),
            ]
            mlp_norm = "norm3"
        post = any(f"{b}_norm" in p for b, _, _ in branches)
        for branch, attn, norm in branches:
            used = _nonempty(p[branch])
            if post:
                self.add(
                    _join(path, f"{branch}_norm", "/"),
                    Entry("layer_norm", _join(torch, norm), stack=stack),
                )
            else:
                self.add(
                    _join(path, f"{branch}/{used.pop(0)}", "/"),
                    Entry("layer_norm", _join(torch, norm), stack=stack),
                )
            self.add(
                _join(path, f"{branch}/{used[0]}", "/"),
                Entry("multihead_attention", _join(torch, attn), stack=stack),
            )
        used = _nonempty(p["mlp"])
        if post:
            self.add(
                _join(path, "mlp_norm", "/"),
                Entry("layer_norm", _join(torch, mlp_norm), stack=stack),
            )
        else:
            self.add(
                _join(path, f"mlp/{used.pop(0)}", "/"),
                Entry("layer_norm", _join(torch, mlp_norm), stack=stack),
            )
        # the first and last Dense (an activation with params in between stays unmapped)
        for i, linear in zip((used[0], used[-1]), ("linear1", "linear2")):
            self.add(
                _join(path, f"mlp/{i}", "/"), Entry("linear", _join(torch, linear), stack=stack)
            )


def _sub(tree, label):
    if isinstance(tree, Mapping):
        return tree.get(label, ())
    if isinstance(tree, (tuple, list)) and isinstance(label, int) and label < len(tree):
        return tree[label]
    return ()


def _nonempty(branch) -> list[int]:
    return [i for i, part in enumerate(branch) if _has_leaves(part)]


def _matches(children, p) -> bool:
    """Whether ``p`` holds one entry per child (a combinator whose params follow its children)."""
    if isinstance(children, Mapping):
        return bool(children) and isinstance(p, Mapping) and set(p) <= set(children)
    return bool(children) and isinstance(p, (tuple, list)) and len(p) == len(children)


def mapping_for(model, params, state, rename: Mapping[str, str] | None = None) -> dict[str, Entry]:
    """:func:`torch_mapping` from the params and state (or their specs) instead of the inputs."""
    walker = _Walker(rename or {})
    walker.walk(model, params, state, "", "", 0)
    unused = sorted(set(walker.rename) - walker.used)
    if unused:
        raise ValueError(
            f"torch_mapping: `rename` names {unused}, which are not layer paths of the model; "
            f"the layers with params are at {sorted(walker.entries)} (combinators above them "
            "may be renamed too)."
        )
    return walker.entries


def torch_mapping(
    model: Layer, inputs: Any, *, rename: Mapping[str, str] | None = None
) -> dict[str, Entry]:
    """The default mapping of ``model``'s layers to the modules of a torch state_dict.

    Args:
        model: the funcnet model.
        inputs: example inputs (arrays or :class:`jax.ShapeDtypeStruct`; only
            shapes are read, nothing is allocated).
        rename: ``{funcnet_path: torch_name}`` for any layer or combinator;
            the layers below it get torch names under the new one.

    Returns:
        ``{funcnet_path: Entry}`` in model order, a plain dict to print or edit.

    Raises:
        ValueError: for a ``rename`` key that is not a path of the model.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(2))
        >>> for path, entry in torch_mapping(model, jnp.zeros((1, 4))).items():
        ...     print(path, entry.kind, entry.torch)
        0 linear 0
        2 linear 2
        >>> named = torch_mapping(model, jnp.zeros((1, 4)), rename={"0": "fc1", "2": "fc2"})
        >>> [e.torch for e in named.values()]
        ['fc1', 'fc2']
    """
    params, state = init_spec(model, inputs)
    return mapping_for(model, params, state, rename)
