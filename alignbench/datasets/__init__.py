"""Datasets, one file per family; discovered by ``alignbench.registry.DATASETS``.

Import-light on purpose: ``get_dataset`` imports only the module that
registers the asked-for name.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alignbench.datasets.base import Dataset


def get_dataset(name: str, root: str | os.PathLike | None = None, **options) -> "Dataset":
    """Instantiate a registered dataset by name or alias (``flickr8k``, ``voc``, ``fashion-mnist`` …).

    ``root`` is the data root (default ``$ALIGNBENCH_DATA``, else ``./data``);
    ``path=`` overrides the dataset's folder under it.  Unknown names raise
    :class:`~alignbench.errors.UnknownNameError` with suggestions.
    """
    from alignbench.registry import DATASETS

    return DATASETS.get(name)(root, **options)
