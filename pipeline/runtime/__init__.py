"""Devices, batching, executors and progress."""
