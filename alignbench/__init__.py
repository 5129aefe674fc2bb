"""alignbench: one harness for post-hoc alignment of frozen vision and text encoders.

``import alignbench as ab`` stays instant: ``ab.run``, ``ab.fit`` and
``ab.load_results`` (alignbench.api) are imported on first use.
"""
__version__ = "0.1.0"
__all__ = ["__version__", "fit", "load_results", "run"]
_API = {"run", "fit", "load_results", "Fitted"}


def __getattr__(name: str):
    if name in _API:
        from alignbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'alignbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
