"""pai-lab: a self-hosted, Jupyter-native machine-learning platform.

Helpers for notebook code (``log_metric``, ``current_job``, ``checkpoint_dir``, ``fs``)
are imported lazily so that ``import pai_lab`` inside a job or kernel stays cheap.
"""

from ._version import __version__

_LAZY = {
    "log_metric": "pai_lab.tracking",
    "current_job": "pai_lab.tracking",
    "checkpoint_dir": "pai_lab.tracking",
    "fs": "pai_lab.storage.paifs",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pai_lab' has no attribute {name!r}")


def load_ipython_extension(ipython):
    """``%load_ext pai_lab`` registers the ``%pai`` magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def _jupyter_server_extension_points():
    from .server import _jupyter_server_extension_points as points

    return points()


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "pai-lab"}]


__all__ = ["__version__", "log_metric", "current_job", "checkpoint_dir", "fs"]
