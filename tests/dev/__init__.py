"""Tests of `percolert.dev`."""
