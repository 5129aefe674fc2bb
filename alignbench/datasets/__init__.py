"""Datasets, one file per family; discovered by ``alignbench.registry.DATASETS``."""
