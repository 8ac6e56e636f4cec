"""Tests of `percolert.cli`."""
