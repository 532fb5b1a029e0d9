"""The benchmark harness: `make bench` (or `python -m bench`) runs it."""
