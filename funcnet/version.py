"""The version of funcnet, in a module of its own so that any part can read it.

Persistence (checkpoints, exports) records it in the files it writes without
importing the package face :mod:`funcnet`.

Examples:
    >>> from funcnet.version import __version__
    >>> isinstance(__version__, str)
    True
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
