"""CLI subcommands, one module each (kept import-light)."""
