"""Benchmarks that run attnkit side by side with its peers (used by ``attnkit bench``)."""
