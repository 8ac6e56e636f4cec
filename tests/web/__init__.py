"""Tests of `percolert.web`."""
