"""Percolert: per-user "notify me" alerts for search, percolated in Elasticsearch."""

from __future__ import annotations

__version__ = "0.1.0"
