"""Tests of `percolert.products`."""
