"""Tests of `percolert.engine`."""
