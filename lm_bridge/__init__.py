"""Collapse Lab's bridge to real causal language models."""
