"""Side-by-side training-step benchmarks: funcnet vs pure JAX and peer libraries.

Run ``python bench/run.py`` (see ``bench/README.md``).
"""
