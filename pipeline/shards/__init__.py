"""Shard files: atomic writes, the candidate store, and the dataset writers."""
