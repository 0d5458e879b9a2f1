"""A ResNet with basic blocks (He et al., 2016) whose params carry torchvision's names.

``resnet()`` is ResNet-18; its params tree has torchvision's module names
(``conv1``, ``bn1``, ``layer1/0/conv1``, ``layer2/0/downsample/0``, ``fc``), so
:func:`funcnet.interop.from_torch` reads a torchvision ``resnet18``
state_dict with the default mapping. Images are channels-last ``(N, H, W,
C)``: transpose torch's ``(N, C, H, W)`` batches (``x.transpose(0, 2, 3, 1)``).
BatchNorm uses torch's defaults (``epsilon=1e-5``, funcnet ``momentum=0.9``,
i.e. torch's 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from funcnet._checks import check_positive_int
from funcnet.combinators import serial
from funcnet.core import Layer, call_with_path, output_spec, spec_of
from funcnet.layers import BatchNorm, Conv, Dense, GlobalAvgPool, MaxPool

__all__ = ["BasicBlock", "resnet"]


def _norm() -> Layer:
    return BatchNorm(momentum=0.9, epsilon=1e-5)


def BasicBlock(features: int, strides: int = 1, *, downsample: bool = False) -> Layer:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, torchvision's ``BasicBlock``.

    The shortcut is ``x``, or with ``downsample`` a strided 1x1 convolution and
    a BatchNorm (``downsample/0``, ``downsample/1``). Params and state are
    dicts named as torchvision's modules. Needs no key; ``train=True``
    updates the BatchNorm statistics.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> block = BasicBlock(8, 2, downsample=True)
        >>> params, state = block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
        >>> sorted(params), params["conv1"]["w"].shape
        (['bn1', 'bn2', 'conv1', 'conv2', 'downsample'], (3, 3, 4, 8))
        >>> block.apply(params, state, jnp.ones((2, 8, 8, 4)))[0].shape
        (2, 4, 4, 8)
    """
    features = check_positive_int("BasicBlock", "features", features)
    children = {
        "conv1": Conv(features, 3, strides=strides, padding=1, use_bias=False),
        "bn1": _norm(),
        "conv2": Conv(features, 3, padding=1, use_bias=False),
        "bn2": _norm(),
    }
    if downsample:
        shortcut = Conv(features, 1, strides=strides, padding=0, use_bias=False)
        children["downsample"] = serial(shortcut, _norm())
    main = ("conv1", "bn1", jax.nn.relu, "conv2", "bn2")

    def init(key, inputs):
        params, state, h = {}, {}, inputs
        for i, step in enumerate(main):
            if callable(step):
                h = jax.eval_shape(step, spec_of(h))
                continue
            layer = children[step]
            params[step], state[step] = call_with_path(
                f"BasicBlock[{step}]", layer.init, jax.random.fold_in(key, i), h
            )
            h = output_spec(layer, h, params[step], state[step])
        if downsample:
            sub = jax.random.fold_in(key, len(main))
            params["downsample"], state["downsample"] = children["downsample"].init(sub, inputs)
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        new_state, h = {}, inputs
        for step in (*main, "downsample"):
            if callable(step):
                h = step(h)
                continue
            if step not in children:
                continue
            x = inputs if step == "downsample" else h
            y, new_state[step] = call_with_path(
                f"BasicBlock[{step}]",
                children[step].apply,
                params[step],
                state[step],
                x,
                key=key,
                train=train,
            )
            if step == "downsample":
                inputs = y
            else:
                h = y
        return jax.nn.relu(h + inputs), new_state

    return Layer(init, apply, f"BasicBlock({features}, {strides})", children)


def resnet(
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    num_classes: int = 1000,
) -> Layer:
    """A ResNet of :func:`BasicBlock` s with torchvision's names; the defaults are ResNet-18.

    A 7x7 stride-2 convolution (``conv1``, ``widths[0]`` channels), ``bn1``,
    ReLU, a 3x3 stride-2 max-pool, then stage ``i`` (``layer{i+1}``) of
    ``stage_sizes[i]`` blocks of ``widths[i]`` channels (stride 2 from the
    second stage on), global average pooling and ``fc``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> model = resnet((1, 1), (8, 16), num_classes=5)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        >>> sorted(params)
        ['avgpool', 'bn1', 'conv1', 'fc', 'layer1', 'layer2', 'maxpool', 'relu']
        >>> model.apply(params, state, jnp.ones((2, 32, 32, 3)))[0].shape
        (2, 5)
    """
    if len(stage_sizes) != len(widths) or not stage_sizes:
        raise ValueError(
            f"resnet: `stage_sizes` and `widths` need one entry per stage, got "
            f"{tuple(stage_sizes)} and {tuple(widths)}."
        )
    stages, channels = {}, widths[0]
    for i, (n, w) in enumerate(zip(stage_sizes, widths)):
        blocks = []
        for j in range(check_positive_int("resnet", "stage_sizes", n)):
            strides = 2 if j == 0 and i > 0 else 1
            blocks.append(BasicBlock(w, strides, downsample=strides != 1 or channels != w))
            channels = w
        stages[f"layer{i + 1}"] = serial(*blocks)
    return serial(
        conv1=Conv(widths[0], 7, strides=2, padding=3, use_bias=False),
        bn1=_norm(),
        relu=jax.nn.relu,
        maxpool=MaxPool(3, 2, padding=1),
        **stages,
        avgpool=GlobalAvgPool(),
        fc=Dense(num_classes),
    )
