"""The benchmarks' own checks, and their Go load client."""
