"""Cycle-level accelerator models."""
