"""Offline training: datasets, batching, truncated BPTT, evaluation, checkpoints."""
