"""Mutation testing for the training wing, data, callbacks and augmentation.

Too slow for CI (every mutant from scratch: about four hours on two cores; later runs
only the mutants of changed lines and the survivors); run it before resolving work that
touches these modules::

    pip install -e '.[test]' pytest-cov
    python tools/mutation.py                  # every mutant not yet killed; tools/MUTATION.md
    python tools/mutation.py --minutes 60     # stop after an hour (the rest waits for next time)
    python tools/mutation.py --files funcnet/augment.py --jobs 1 --reuse-coverage
    python tools/mutation.py --reuse-coverage --add-coverage tests/test_mutants.py  # a new test
    python tools/mutation.py --reuse-coverage --survivors  # did the new tests kill them?

Results persist in ``tools/mutation_results.json`` (committed): a mutant once
killed is not run again while its line is unchanged (lines added or removed
elsewhere in the module leave it as it is); survivors run every time
until a test kills them or they are triaged (then again when their line
changes; ``--all`` runs every mutant). Mutants run in a fixed random order, so a run that
stops early has run a random sample.

How it works, in four steps:

1. **Coverage by test.** The tests in ``TESTS`` run once under ``pytest-cov``
   with ``--cov-context=test``, which records, for every line of the target
   modules, the tests that executed it (doctests included), and each test's
   duration.
2. **Mutants.** Each target module is tokenized; every operator, comparison,
   boolean keyword and number outside docstrings, annotations, f-strings and
   ``raise``/``warn`` statements gives one mutant (``<`` to ``<=``, ``+`` to
   ``-``, ``and`` to ``or``, ``True`` to ``False``, ``not x`` to ``x``, ``n``
   to ``n + 1``, ...), as mutmut does.
3. **Runs.** Each mutant is written into a private copy of the repository
   (one per job) and only the tests that cover its line run, fastest first,
   stopping at the first failure. A failure or a timeout kills the mutant; a
   line no test runs is a survivor ("uncovered").
4. **Report.** ``tools/MUTATION.md`` gets the score per module and every
   survivor. Survivors that are equivalent (no test can tell them apart) are
   triaged in ``tools/mutation_triage.json``: key (as printed in the report)
   to the reason; they count as killed in the score and are listed apart. A
   survivor that is not equivalent but not yet tested (e.g. a multi-device
   path only subprocess tests reach, which per-line coverage cannot see) gets
   a note starting with ``open:``; it stays a survivor. One that a subprocess
   test kills (checked by hand, e.g. a ``test_mesh4_*`` test run with its
   mutant in a copy of the repository) gets a note starting with
   ``subprocess:`` naming that test; it counts as killed and is listed apart.
   A key names the line's text and the mutation, so it covers every
   identical mutation of that line (and a note goes stale when the line
   changes).
"""

from __future__ import annotations

import argparse
import ast
import bisect
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["funcnet/training", "funcnet/data", "funcnet/augment.py"]
NO_XDIST = ["-o", "addopts=--doctest-modules", "-p", "no:xdist"]  # pytest in one process
TESTS = [
    "tests/test_train.py",
    "tests/test_loop.py",
    "tests/test_data.py",
    "tests/test_augment.py",
    "tests/test_properties.py",
    "tests/test_stacked.py",
    "tests/test_distributed.py",
    "tests/test_checkpoint.py",
    "tests/test_stacked_fit.py",
    "tests/test_precision.py",
    "tests/test_clean.py",
    "tests/test_history.py",
    "tests/test_progress.py",
    "tests/test_shards.py",
    "tests/test_grain.py",
    "tests/test_jsonl_logger.py",
    "tests/test_uint8_warning.py",
    "tests/test_tensorboard.py",
    "tests/test_mutants.py",
    "funcnet/training",
    "funcnet/data",
    "funcnet/augment.py",
]
REPORT = ROOT / "tools" / "MUTATION.md"
RESULTS = ROOT / "tools" / "mutation_results.json"
TRIAGE = ROOT / "tools" / "mutation_triage.json"
COVERAGE = ROOT / "tools" / ".mutation_coverage.json"
CODE = ROOT  # the tree the mutants come from: main() points it at a snapshot of HEAD
OPEN = "open:"  # a triage note for a survivor that is not equivalent (a test is still owed)
SUBPROCESS = "subprocess:"  # a survivor killed by a subprocess test, which coverage cannot see

OPERATORS = {
    "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
    "+": "-", "-": "+", "*": "/", "/": "*", "//": "/", "%": "//", "**": "*",
    "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*=", "&": "|", "|": "&",
}  # fmt: skip
KEYWORDS = {
    "and": "or", "or": "and", "True": "False", "False": "True",
    "is": "is not", "in": "not in", "break": "continue", "continue": "break",
}  # fmt: skip
SILENT_CALLS = {"warn", "print", "write", "log", "debug", "info", "warning"}


@dataclass
class Mutant:
    path: str  # relative to CODE
    line: int
    col: int
    old: str
    new: str
    where: str  # enclosing function's qualified name
    source_line: str
    status: str = "pending"  # killed | timeout | survived | uncovered
    tests: int = 0
    nth: int = 0  # how many mutants of the file with the same key come before it

    @property
    def id(self) -> str:
        """The key and its occurrence: unique within the code as it is, and unchanged when
        lines above it are added or removed (so their results stay valid)."""
        return f"{self.key}#{self.nth}"

    @property
    def key(self) -> str:
        return f"{self.path}::{self.where}::{self.source_line.strip()}::{self.old}->{self.new}"


# --- step 2: mutants -------------------------------------------------------------------------


def _spans(tree: ast.AST) -> tuple[list[tuple], list[tuple]]:
    """(excluded spans, function spans with their qualified names), as ((l0, c0), (l1, c1))."""
    excluded, functions = [], []

    def span(node):
        return ((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset))

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}" if prefix else child.name
                functions.append((span(child), name))
                body = child.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                ):
                    excluded.append(span(body[0]))  # the docstring
            if isinstance(child, ast.Raise | ast.JoinedStr | ast.Assert):
                excluded.append(span(child))
            elif isinstance(child, ast.arg | ast.AnnAssign) and child.annotation is not None:
                excluded.append(span(child.annotation))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and child.returns:
                excluded.append(span(child.returns))
            elif isinstance(child, ast.Call):
                func = child.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in SILENT_CALLS:
                    excluded.append(span(child))
            elif isinstance(child, ast.Assign) and any(
                getattr(t, "id", "") == "__all__" for t in child.targets
            ):
                excluded.append(span(child))
            visit(child, name)

    visit(tree, "")
    return excluded, functions


def _operator_positions(tree: ast.AST, tokens: list) -> set:
    """Where a binary, unary, boolean or comparison operator token starts (so that the `*` of
    `*args` or the `|` of a type union is never mutated)."""
    starts = [t.start for t in tokens]
    skip = {")", "]", "}"}

    def between(left, right) -> tuple | None:  # the operator token between two operands
        i = bisect.bisect_left(starts, (left.end_lineno, left.end_col_offset))
        end = (right.lineno, right.col_offset)
        while i < len(tokens) and tokens[i].start < end:
            if tokens[i].type in (tokenize.OP, tokenize.NAME) and tokens[i].string not in skip:
                return tokens[i].start
            i += 1
        return None  # inside an f-string, which is one token

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            found.add(between(node.left, node.right))
        elif isinstance(node, ast.AugAssign):
            found.add(between(node.target, node.value))
        elif isinstance(node, ast.UnaryOp):
            found.add((node.lineno, node.col_offset))
        elif isinstance(node, ast.BoolOp):
            found.update(between(a, b) for a, b in zip(node.values, node.values[1:]))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            found.update(between(a, b) for a, b in itertools.pairwise(operands))
    return found


def _inside(pos, spans) -> bool:
    return any(a <= pos < b for a, b in spans)


def _enclosing(pos, functions) -> str:
    best = "<module>"
    for (a, b), name in functions:
        if a <= pos < b:
            best = name  # visited outer first, so the last match is the innermost
    return best


def _number(text: str) -> str | None:
    try:
        value = ast.literal_eval(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return repr(value + 1)


def mutants_of(path: str) -> list[Mutant]:
    source = (CODE / path).read_text()
    lines = source.splitlines()
    excluded, functions = _spans(ast.parse(source))
    out = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    operators = _operator_positions(ast.parse(source), tokens)
    for i, tok in enumerate(tokens):
        pos = tok.start
        if _inside(pos, excluded):
            continue
        new = None
        if tok.type == tokenize.OP:
            new = OPERATORS.get(tok.string) if pos in operators else None
        elif tok.type == tokenize.NAME:
            new = KEYWORDS.get(tok.string)
            if tok.string in ("and", "or", "not", "is", "in") and pos not in operators:
                new = None
            if tok.string == "not" and tokens[i + 1].string != "in":
                new = ""
            if tok.string in ("is", "in") and (
                tokens[i + 1].string == "not" or tokens[i - 1].string in ("not", "for")
            ):
                new = None  # `is not`, `not in` and `for x in` are left alone
        elif tok.type == tokenize.NUMBER:
            new = _number(tok.string)
        if new is None:
            continue
        out.append(
            Mutant(
                path, pos[0], pos[1], tok.string, new, _enclosing(pos, functions), lines[pos[0] - 1]
            )
        )
    seen: dict[str, int] = {}
    for m in out:  # in source order
        m.nth = seen[m.key] = seen.get(m.key, -1) + 1
    return out


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    text = lines[m.line - 1]
    assert text[m.col : m.col + len(m.old)] == m.old, (m, text)
    lines[m.line - 1] = text[: m.col] + m.new + text[m.col + len(m.old) :]
    return "".join(lines)


def target_files() -> list[str]:
    files = []
    for t in TARGETS:
        p = CODE / t
        found = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        files += [str(f.relative_to(CODE)) for f in found]
    return files


# --- step 1: coverage by test ----------------------------------------------------------------


def coverage_map(workdir: Path, tests: list[str] | None = None) -> tuple[dict, dict]:
    """({(path, line): {test ids}}, {test id: seconds}) from one pytest-cov run of ``tests``
    (default: ``TESTS``) in a copy of the committed tree; a test that fails there is never
    used."""
    repo = workdir / "coverage"
    _copy_repo(repo)
    junit = workdir / "junit.xml"
    cov_file = workdir / ".coverage"
    env = dict(os.environ, COVERAGE_FILE=str(cov_file))
    # without pytest-xdist (the project's addopts turn it on): with it loaded, even at `-n 0`,
    # pytest-cov records no test contexts
    tests = [t for t in tests or TESTS if (repo / t.split("::")[0]).exists()]  # files or ids
    cmd = [sys.executable, "-m", "pytest", "-q", *NO_XDIST, "-p", "no:cacheprovider",
           "-m", "not slow", "--cov=funcnet", "--cov-context=test", "--cov-report=",
           f"--junitxml={junit}", *tests]  # fmt: skip
    print("coverage run:", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, cwd=repo, env=env, check=False)
    import coverage

    data = coverage.CoverageData(basename=str(cov_file))
    data.read()
    lines = {}
    for measured in data.measured_files():
        rel = str(Path(measured).resolve().relative_to(repo.resolve()))
        for line, contexts in data.contexts_by_lineno(measured).items():
            ids = {c.rsplit("|", 1)[0] for c in contexts if c}
            lines[(rel, line)] = {_test_id(i) for i in ids}
    durations, failed = _durations(junit)
    if failed:
        print(f"not used, failing without a mutant: {sorted(failed)}", flush=True)
    return {k: v - failed for k, v in lines.items()}, durations


def _add_coverage(workdir: Path, tests: list[str], lines: dict, durations: dict) -> tuple:
    """The saved coverage with ``tests`` (files or test ids) measured again and merged in."""
    new_lines, new_durations = coverage_map(workdir, tests)
    names = tuple(t.split("::", 1)[0] for t in tests)
    lines = {k: {i for i in v if not i.startswith(names)} for k, v in lines.items()}
    for k, ids in new_lines.items():
        lines.setdefault(k, set()).update(ids)
    durations = {t: d for t, d in durations.items() if not t.startswith(names)}
    return lines, durations | new_durations


def _test_id(context: str) -> str:
    """A pytest-cov context -> a node id runnable alone (parameters dropped, doctests kept)."""
    return context.split("[", 1)[0]


def _durations(junit: Path) -> tuple[dict, set]:
    times, failed = {}, set()
    for case in ET.parse(junit).iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        node = f"{cls.replace('.', '/')}.py::{name.split('[', 1)[0]}"
        times[node] = times.get(node, 0.0) + float(case.get("time", 0))
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(node)
    return times, failed


# --- step 3: runs ----------------------------------------------------------------------------


def _snapshot_head(dest: Path) -> None:
    """The committed tree (``git archive HEAD``): work in progress never reaches a run, and
    commits made while it runs neither (every copy is of this one snapshot)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def _copy_repo(dest: Path) -> None:
    shutil.copytree(CODE, dest)


def _code_hash() -> str:
    """A hash of the target modules as they are in ``CODE`` (saved with the coverage, whose
    line numbers hold for that code only)."""
    digest = hashlib.sha256()
    for f in target_files():
        digest.update(f.encode() + (CODE / f).read_bytes())
    return digest.hexdigest()[:16]


def run_one(m: Mutant, tests: list[str], durations: dict, copy: Path, cache: str) -> str:
    if not tests:
        return "uncovered"
    target = copy / m.path
    original = target.read_text()
    target.write_text(apply(original, m))
    tests = sorted(tests, key=lambda t: durations.get(t, 1.0))
    budget = 60 + 3 * sum(durations.get(t, 5.0) for t in tests)
    env = dict(
        os.environ,
        FUNCNET_TEST_CACHE=cache,
        FUNCNET_TEST_CACHE_MIN_SECS="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", *NO_XDIST, "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, timeout=budget)
        # 0: passed, 1: failed, 2/3: the mutant broke an import; 4/5: bad test ids, a bug here
        status = {0: "survived", 1: "killed", 2: "killed", 3: "killed"}.get(proc.returncode)
        if status is None:
            print(proc.stdout.decode()[-2000:], flush=True)
            status = "error"  # not counted, run again next time
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:
        target.write_text(original)
    return status


def tests_for(m: Mutant, lines: dict) -> list[str]:
    """The tests that run the mutant's line; for a line run only at import (a module constant),
    every test that runs any line of its module."""
    ids = lines.get((m.path, m.line), set())
    if not ids and (m.path, m.line) in lines:
        ids = set().union(*(t for (p, _), t in lines.items() if p == m.path))
    return sorted(ids)


# --- step 4: report --------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion seen in a random sample.

    Examples:
        >>> [round(v, 3) for v in wilson(90, 100)]
        [0.826, 0.945]
    """
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return center - half, center + half


def write_report(mutants: list[Mutant], triage: dict, totals: dict[str, int]) -> None:
    """``tools/MUTATION.md`` from the mutants run (``totals``: every module's mutant count)."""
    by_file: dict[str, list[Mutant]] = {}
    for m in (m for m in mutants if m.status in ("killed", "timeout", "survived", "uncovered")):
        by_file.setdefault(m.path, []).append(m)
    rows, survivors, equivalent, by_hand = [], [], [], []
    total = dead = 0
    equivalent_to = {k: v for k, v in triage.items() if not v.startswith((OPEN, SUBPROCESS))}
    killed_by = {k: v for k, v in triage.items() if v.startswith(SUBPROCESS)}
    for path, ms in sorted(by_file.items()):
        alive = [m for m in ms if m.status in ("survived", "uncovered")]
        k = len(ms) - len(alive) + sum(m.key in killed_by for m in alive)
        e = sum(m.key in equivalent_to for m in alive)
        total += len(ms)
        dead += k + e
        rows.append(
            f"| `{path}` | {len(ms)} of {totals.get(path, len(ms))} | {k} | {e} | "
            f"{len(ms) - k - e} | {(k + e) / len(ms):.1%} |"
        )
        for m in alive:
            line = f"- `{m.key}` (line {m.line}, {m.status})"
            note = f": {triage[m.key]}" if m.key in triage else ": not triaged yet"
            kind = equivalent if m.key in equivalent_to else by_hand if m.key in killed_by else None
            (survivors if kind is None else kind).append(line + note)
    total_mutants = sum(totals.values())
    low, high = wilson(dead, total)
    sampled = (
        f" The mutants run are a random sample: the score over all {total_mutants} lies in "
        f"[{low:.1%}, {high:.1%}] with 95% confidence (Wilson interval)."
        if total < total_mutants
        else ""
    )
    text = [
        "# Mutation testing: training wing, data, callbacks, augmentation",
        "",
        "Written by `python tools/mutation.py` (see its docstring); do not edit by hand.",
        "Equivalent mutants are triaged in `tools/mutation_triage.json`.",
        "",
        f"**Score: {dead / max(total, 1):.1%}** ({dead} of {total} mutants run were killed or "
        f"triaged as equivalent; {total} of the {total_mutants} mutants of the code as it is "
        "have been run, in random order). Killed counts those that subprocess tests kill "
        f"(listed below, checked by hand).{sampled}",
        "",
        "| module | mutants run | killed | equivalent | survived | score |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"## Survivors ({len(survivors)})",
        "",
        *(survivors or ["None."]),
        "",
        f"## Killed by a subprocess test, checked by hand ({len(by_hand)})",
        "",
        *(by_hand or ["None."]),
        "",
        f"## Equivalent, triaged ({len(equivalent)})",
        "",
        *(equivalent or ["None."]),
        "",
    ]
    REPORT.write_text("\n".join(text))


def _load_results() -> dict:
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if any("nth" not in r for r in rows):  # written when ids held line numbers: renumber
        seen: dict[str, int] = {}
        for r in sorted(rows, key=lambda r: (r["path"], r["line"], r["col"])):
            m = Mutant(**{k: v for k, v in r.items() if k != "id"})
            m.nth = seen[m.key] = seen.get(m.key, -1) + 1
            r.update(nth=m.nth, id=m.id)
    return {r["id"]: r for r in rows}


def _save_results(results: dict) -> None:
    current = {m.id for f in target_files() for m in mutants_of(f)}
    rows = [r for i, r in sorted(results.items()) if i in current]  # drop mutants of old code
    RESULTS.write_text(json.dumps(rows, indent=0))


def _pending(m: Mutant, results: dict, triage: dict) -> bool:
    """Whether ``m`` runs: not when killed before, nor when it survived and is triaged (as
    equivalent or killed by a subprocess test) while its line is unchanged."""
    status = results.get(m.id, {}).get("status")
    if status in ("killed", "timeout"):
        return False
    note = triage.get(m.key)
    return status is None or note is None or note.startswith(OPEN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="*", help="target modules (default: all)")
    parser.add_argument("--all", action="store_true", help="re-run mutants already killed too")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0, help="stop starting mutants after")
    parser.add_argument("--reuse-coverage", action="store_true", help="skip step 1")
    parser.add_argument(
        "--survivors", action="store_true", help="run only the survivors of earlier runs"
    )
    parser.add_argument(
        "--add-coverage", nargs="*", default=[], metavar="TEST",
        help="with --reuse-coverage: run step 1 for these tests only (e.g. a new test file) and "
        "add them to the saved coverage",
    )  # fmt: skip
    args = parser.parse_args()

    global CODE
    start = time.time()
    work = Path(tempfile.mkdtemp(prefix="funcnet-mutation-"))
    CODE = work / "head"
    _snapshot_head(CODE)
    files = args.files or target_files()
    results = _load_results()
    triage = json.loads(TRIAGE.read_text()) if TRIAGE.exists() else {}
    mutants = [m for f in files for m in mutants_of(f) if args.all or _pending(m, results, triage)]
    random.Random(0).shuffle(mutants)  # stopped early, the mutants run are a random sample
    # last run's survivors first (new tests may kill them), in their random order
    mutants.sort(key=lambda m: m.id not in results)
    if args.survivors:
        mutants = [m for m in mutants if m.id in results]
    print(f"{len(mutants)} mutants to run in {len(files)} files", flush=True)

    if args.reuse_coverage and COVERAGE.exists():
        saved = json.loads(COVERAGE.read_text())
        if saved.get("code") != _code_hash():
            print(
                "warning: the target modules changed since the saved coverage was measured, so "
                "its line numbers may name other tests: run without --reuse-coverage",
                flush=True,
            )
        lines = {(p, int(n)): set(ids) for p, n, ids in saved["lines"]}
        durations = saved["durations"]
        if args.add_coverage:
            lines, durations = _add_coverage(work, args.add_coverage, lines, durations)
    else:
        lines, durations = coverage_map(work)
    if not args.reuse_coverage or args.add_coverage:
        saved = [(p, n, sorted(ids)) for (p, n), ids in lines.items()]
        COVERAGE.write_text(
            json.dumps({"code": _code_hash(), "lines": saved, "durations": durations})
        )
    lock = threading.Lock()

    def job(j: int) -> None:
        copy, cache = work / f"w{j}", str(work / f"cache{j}")
        _copy_repo(copy)
        for m in mutants[j :: args.jobs]:
            if args.minutes and time.time() - start > 60 * args.minutes:
                return
            tests = tests_for(m, lines)
            m.tests = len(tests)
            m.status = run_one(m, tests, durations, copy, cache)
            with lock:
                results[m.id] = {"id": m.id, **asdict(m)}
                _save_results(results)
            if m.status in ("survived", "uncovered"):
                print(f"{m.status}: {m.key} (line {m.line})", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(job, range(args.jobs)))
    everything = [
        Mutant(**{k: v for k, v in r.items() if k != "id"}) for r in _load_results().values()
    ]
    write_report(everything, triage, {f: len(mutants_of(f)) for f in target_files()})
    shutil.rmtree(work, ignore_errors=True)
    print(REPORT.read_text().split("## Survivors")[0])


if __name__ == "__main__":
    main()
