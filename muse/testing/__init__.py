"""Helpers for testing graphs and plugins: `muse.testing.faults` makes any node fail on purpose."""
