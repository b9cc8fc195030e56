"""Generators for small synthetic corpora that exercise the same code paths as real data."""
