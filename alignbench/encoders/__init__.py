"""Encoders, one file per family; discovered by ``alignbench.registry.ENCODERS``."""
