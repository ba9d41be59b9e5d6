"""Tuning: the loop (tuner.py), search strategies and executors."""
