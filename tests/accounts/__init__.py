"""Tests of `percolert.accounts`: shops' tokens, account ids, export and erasure."""
