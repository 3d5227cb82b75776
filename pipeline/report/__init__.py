"""Metrics, dvc plots data, and the dataset card."""
