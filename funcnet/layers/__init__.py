"""The layers: each constructor checks its hyperparameters and returns a :class:`~funcnet.Layer`."""

from funcnet.layers.activations import *  # noqa: F403
from funcnet.layers.activations import __all__ as _activations
from funcnet.layers.attention import *  # noqa: F403
from funcnet.layers.attention import __all__ as _attention
from funcnet.layers.conv import *  # noqa: F403
from funcnet.layers.conv import __all__ as _conv
from funcnet.layers.dense import *  # noqa: F403
from funcnet.layers.dense import __all__ as _dense
from funcnet.layers.dropout import *  # noqa: F403
from funcnet.layers.dropout import __all__ as _dropout
from funcnet.layers.norm import *  # noqa: F403
from funcnet.layers.norm import __all__ as _norm
from funcnet.layers.pool import *  # noqa: F403
from funcnet.layers.pool import __all__ as _pool
from funcnet.layers.recurrent import *  # noqa: F403
from funcnet.layers.recurrent import __all__ as _recurrent
from funcnet.layers.reshape import *  # noqa: F403
from funcnet.layers.reshape import __all__ as _reshape
from funcnet.layers.transformer import *  # noqa: F403
from funcnet.layers.transformer import __all__ as _transformer

__all__ = [
    *_activations,
    *_attention,
    *_conv,
    *_dense,
    *_dropout,
    *_norm,
    *_pool,
    *_recurrent,
    *_reshape,
    *_transformer,
]
