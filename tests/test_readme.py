"""The README's Python examples run as written."""

import pathlib
import re

import pytest

STRICT_DTYPES = False  # the README trains with optax.adam
README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, capsys):
    pytest.importorskip("sklearn")
    namespace = {}
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), namespace)
    if "val_accuracy" in BLOCKS[index]:  # the digits example states its accuracy
        assert max(namespace["history"]["val_accuracy"]) > 0.9
        assert namespace["test"]["accuracy"] > 0.9
