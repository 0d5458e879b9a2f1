"""Recurrent layers: cells (SimpleRNNCell, LSTMCell, GRUCell), RNN and Bidirectional.

A *cell* is one time step, a :class:`RecurrentCell` of pure functions::

    params, () = cell.init(key, x_t)            # x_t: one step, (N, F), only shape/dtype read
    carry = cell.initial_carry(N, jnp.float32)  # zeros
    carry, y_t = cell.apply(params, carry, x_t)  # (N, F) -> (N, H)

so a cell can drive a hand-written ``jax.lax.scan``. :func:`RNN` turns a cell
into a :class:`~funcnet.core.Layer` that runs it over the time axis of
batch-major ``(N, T, F)`` inputs with one ``lax.scan``.

**Inputs with several arrays** (the convention of :mod:`funcnet.combinators`,
shared with the attention layers and read by its ``split_inputs``): a plain
array means ``{"x": array}``; otherwise the inputs are one dict with fixed
keys -- ``"x"`` the main input ``(N, T, F)``, ``"lengths"`` ``(N,)`` integer
per-sequence lengths, ``"mask"`` ``(N, T)`` bool (True = valid step) and
``"carry"`` an initial carry (as ``cell.initial_carry(N)``). Other keys are an
error. A step is *valid* when ``t < lengths[n]`` and ``mask[n, t]``; invalid
steps are skipped: the carry passes through them unchanged and the output
there is zero.

**Weights map one-to-one to PyTorch** (gate order and equations are
PyTorch's; for a layer ``l`` of ``torch.nn.LSTM``/``GRU``/``RNN``)::

    params["wi"] = weight_ih_l0.T         # (F, G*H), G gates stacked along the last axis
    params["wh"] = weight_hh_l0.T         # (H, G*H)
    params["b"]  = bias_ih_l0 + bias_hh_l0   # LSTMCell, SimpleRNNCell
    params["bi"], params["bh"] = bias_ih_l0, bias_hh_l0   # GRUCell (kept apart, see its equations)

Keras' ``LSTM`` uses the same gate order (``kernel`` = ``wi``,
``recurrent_kernel`` = ``wh``, ``bias`` = ``b``); Keras' ``GRU``
(``reset_after=True``) orders its gates ``z, r, h``: swap the first two blocks.
"""

from funcnet.layers.recurrent.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell
from funcnet.layers.recurrent.rnn import RNN, Bidirectional

__all__ = ["Bidirectional", "GRUCell", "LSTMCell", "RNN", "RecurrentCell", "SimpleRNNCell"]
