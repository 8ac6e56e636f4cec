"""Tests of `percolert.broker`."""
