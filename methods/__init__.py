"""Alignment methods, one file each; discovered by ``alignbench.registry.METHODS``."""
