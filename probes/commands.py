"""Registers the built-in frozen-feature probes with the evaluator registry."""
