"""Timing and validation."""
