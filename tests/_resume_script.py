"""A small checkpointed ``fit``, run as a subprocess by tests/test_checkpoint.py.

Usage: ``python _resume_script.py CHECKPOINT_DIR OUTPUT_FILE``. Trains from the
latest checkpoint in ``CHECKPOINT_DIR`` (if any) to the end and saves the final
params to ``OUTPUT_FILE``. With ``FUNCNET_TEST_PAUSE_AT=N`` in the environment
it prints ``paused`` and sleeps when step ``N`` ends (before that step's save),
so the test can SIGKILL it at a known point in the middle of an epoch. The pause
changes nothing else: the restarted command is the same without it.
"""

import os
import sys
import time

import jax
import numpy as np
import optax

import funcnet as fn
from funcnet.checkpoint import CheckpointManager, save


class _Pause:
    def __init__(self, step: int):
        self.step = step

    def on_steps_end(self, step, train_state):
        del train_state
        if step == self.step:
            print("paused", flush=True)
            time.sleep(300)


def train(directory: str, pause: int = -1) -> fn.TrainState:
    """The run: 3 epochs of 6 steps, 2 steps per execution, a checkpoint every 2 steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    model = fn.serial(fn.Dense(16), fn.BatchNorm(), jax.nn.relu, fn.Dropout(0.2), fn.Dense(2))
    optimizer = optax.inject_hyperparams(optax.adam)(
        learning_rate=optax.exponential_decay(1e-2, transition_steps=4, decay_rate=0.7)
    )
    ts, _ = fn.fit(
        model,
        optimizer,
        "sparse_categorical_cross_entropy",
        (x, y),
        epochs=3,
        batch_size=16,  # 6 steps per epoch, 18 in all
        steps_per_execution=2,
        key=jax.random.key(7),
        checkpoint=CheckpointManager(directory, max_to_keep=2),
        checkpoint_every=2,
        callbacks=[_Pause(pause)],
        verbose=0,
    )
    return ts


def main() -> None:
    directory, output = sys.argv[1], sys.argv[2]
    ts = train(directory, int(os.environ.get("FUNCNET_TEST_PAUSE_AT", "-1")))
    save(output, {"params": ts.params, "state": ts.state, "step": int(ts.step)})


if __name__ == "__main__":
    main()
