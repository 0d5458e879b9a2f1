"""Every example's ``--help`` shows a help text and the default of every argument.

``argparse.ArgumentDefaultsHelpFormatter`` prints ``(default: ...)`` only for an
argument with a ``help=`` text, so every ``add_argument`` needs one: checked on
the AST of every example (fast), and on the real ``--help`` output of two of them.
"""

import ast
import pathlib
import re
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


def _add_argument_calls(tree):
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
    ]
    return sorted(calls, key=lambda node: node.lineno)


def _name(call):
    """The argument's flags as written, e.g. ``--batch-size`` (or ``-n/--num``)."""
    flags = [a.value for a in call.args if isinstance(a, ast.Constant)]
    return "/".join(flags) if flags else ast.unparse(call)


def help_problems(source, filename):
    """``"file:line --arg: why"`` for each ``add_argument`` whose help text is missing or wrong.

    Wrong: empty, or spelling out its own ``(default: ...)``, which the formatter
    appends a second time (write ``unset: ...`` for what a ``None`` default means).
    """
    problems = []
    for call in _add_argument_calls(ast.parse(source)):
        where = f"{filename}:{call.lineno} {_name(call)}"
        text = next((k.value for k in call.keywords if k.arg == "help"), None)
        if text is None or (isinstance(text, ast.Constant) and text.value is None):
            problems.append(f"{where}: no help=")
        elif isinstance(text, ast.Constant) and not str(text.value).strip():
            problems.append(f"{where}: empty help=")
        elif isinstance(text, ast.Constant) and "(default:" in str(text.value):
            problems.append(f"{where}: help= spells out '(default:', the formatter adds it")
    return problems


def test_there_are_examples():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_parser_shows_defaults(path):
    (call,) = _parser_calls(path)
    kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert kwargs.get("formatter_class") == "argparse.ArgumentDefaultsHelpFormatter"


def test_help_problems_finds_each_kind():
    source = (
        "import argparse\n"
        "p = argparse.ArgumentParser()\n"
        'p.add_argument("--ok", type=int, default=1, help="rows per batch")\n'
        'p.add_argument("--epochs", type=int, default=3)\n'
        'p.add_argument("-n", "--num", help=None)\n'
        'p.add_argument("--empty", help="  ")\n'
        'group = p.add_argument_group("g")\n'
        'group.add_argument("--out", help="PNG (default: a temp file)")\n'
        'p.add_argument("--fine", help=f"one of {1, 2}")\n'
    )
    assert help_problems(source, "x.py") == [
        "x.py:4 --epochs: no help=",
        "x.py:5 -n/--num: no help=",
        "x.py:6 --empty: empty help=",
        "x.py:8 --out: help= spells out '(default:', the formatter adds it",
    ]


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_argument_has_help(path):
    problems = help_problems(path.read_text(), f"examples/{path.name}")
    assert not problems, "give these arguments a help= text:\n" + "\n".join(problems)


def _help_entries(text):
    """``{first flag: its help text}`` from the options section of a ``--help`` output."""
    entries, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (-{1,2}[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(body.split()) for flag, body in entries.items()}


def test_help_entries_parser():
    text = (
        "usage: x.py [-h] [--epochs EPOCHS]\n\noptions:\n"
        "  -h, --help         show this help message and exit\n"
        "  --epochs EPOCHS    training\n"
        "                     epochs (default: 3)\n"
        "  --out OUT\n"
        "                     write here (default: None)\n"
    )
    assert _help_entries(text) == {
        "-h": "-h, --help show this help message and exit",
        "--epochs": "--epochs EPOCHS training epochs (default: 3)",
        "--out": "--out OUT write here (default: None)",
    }


@pytest.mark.parametrize("name", ["quickstart.py", "gan.py"])
def test_help_output_has_every_default(name):
    path = EXAMPLES / name
    out = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    entries = _help_entries(out)
    for call in _add_argument_calls(ast.parse(path.read_text())):
        flag = next(a.value for a in call.args if isinstance(a, ast.Constant))
        assert flag in entries, f"{name}: {flag} missing from --help:\n{out}"
        assert "(default: " in entries[flag], f"{name}: no default shown for {flag}: {entries}"
        assert entries[flag].count("(default:") == 1, entries[flag]
    if name == "quickstart.py":
        assert "two epochs, runs in seconds (default: False)" in entries["--smoke"]
        assert "training epochs (--smoke: 2) (default: 40)" in entries["--epochs"]
