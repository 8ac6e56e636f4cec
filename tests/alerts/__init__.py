"""Tests of `percolert.alerts`."""
