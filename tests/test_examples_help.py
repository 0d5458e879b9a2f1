"""Every example's ``--help`` shows the default values (ArgumentDefaultsHelpFormatter)."""

import ast
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if "ArgumentParser(" in p.read_text())


def _parser_calls(path):
    tree = ast.parse(path.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "ArgumentParser"
    ]


def test_there_are_examples():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_parser_shows_defaults(path):
    (call,) = _parser_calls(path)
    kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert kwargs.get("formatter_class") == "argparse.ArgumentDefaultsHelpFormatter"


def test_help_output_has_defaults():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "two epochs, runs in seconds (default: False)" in out
