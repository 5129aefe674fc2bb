"""Evaluation tasks, one file each; discovered by ``alignbench.registry.TASKS``."""
