"""Run a test file's ``test_mesh4_*`` (or ``test_mesh8_*``, ...) tests in a child process with
that many virtual CPU devices."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_mesh_tests(test_file: str, devices: int = 4, timeout: int = 300) -> None:
    """``pytest -k mesh<devices> tests/<test_file>`` with
    ``--xla_force_host_platform_device_count=<devices>``; fails the calling test (with the
    child's output) unless every one passed."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())
    env.pop("JAX_NUM_CPU_DEVICES", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", f"mesh{devices}"]
    cmd += ["-o", "addopts=", os.path.join(HERE, test_file)]
    try:
        done = subprocess.run(
            cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:  # the child was killed by subprocess.run
        pytest.fail(f"the {devices}-device tests did not finish in {err.timeout} s:\n{err.stdout}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]


def run_mesh4_tests(test_file: str, timeout: int = 300) -> None:
    """``run_mesh_tests(test_file, 4, timeout)``."""
    run_mesh_tests(test_file, 4, timeout)
