"""Tests of the examples beside the package: the shop that embeds Percolert."""
