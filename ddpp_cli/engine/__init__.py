"""The ddpp engine: everything the CLI does, importable and silent (progress via callbacks)."""
