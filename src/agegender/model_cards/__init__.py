"""Package data: the built-in model cards (TOML)."""
