"""Console commands (entry points in setup.py)."""
