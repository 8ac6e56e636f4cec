"""Tests of `percolert.watches`."""
