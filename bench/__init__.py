"""Standalone benchmark scripts (``python -m bench.ingest --json``); not part of the package."""
