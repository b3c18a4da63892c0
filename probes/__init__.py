"""Frozen-feature evaluators: features cache, linear probe, k-NN, retrieval, quality, few-shot."""
