"""alignbench: one harness for post-hoc alignment of frozen vision and text encoders."""
__version__ = "0.1.0"
