"""Terminal rendering: the only modules that import rich (tables, the run dashboard, the live view)."""
