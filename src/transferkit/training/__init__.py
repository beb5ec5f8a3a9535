"""The training engine and what plugs into it."""
