"""Tests of `percolert.server`."""
