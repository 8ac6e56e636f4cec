"""Tests of `percolert.realtime`."""
