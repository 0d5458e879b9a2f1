"""Shared test settings: strict dtype promotion, a key fixture, a persistent compile cache."""

import os

# The tests run tiny models, whose compile time dwarfs their run time: without LLVM's
# optimizations (XLA's HLO passes still run, and the numbers are the same) a compile-heavy
# test file takes about half the time. Set here, before JAX starts its backend, so that
# subprocesses (examples, multi-device and multi-process tests) inherit it. An explicit
# `--xla_backend_optimization_level` in XLA_FLAGS wins.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

_cache = os.environ.get("FUNCNET_TEST_CACHE", os.path.join(os.path.dirname(__file__), ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _cache)
# tools/mutation.py caches every compile (0): most of a mutant's programs are unchanged
_min_secs = float(os.environ.get("FUNCNET_TEST_CACHE_MIN_SECS", "0.5"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", _min_secs)


@pytest.fixture(autouse=True)
def strict_dtypes(request):
    """Run each test with strict dtype promotion, so no layer promotes dtypes silently.

    A test module that drives optax (whose Adam is not strict-clean) sets
    ``STRICT_DTYPES = False``.
    """
    if getattr(request.module, "STRICT_DTYPES", True):
        with jax.numpy_dtype_promotion("strict"):
            yield
    else:
        yield


@pytest.fixture
def key():
    return jax.random.key(0)
