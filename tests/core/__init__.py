"""Tests of `percolert.core`."""
