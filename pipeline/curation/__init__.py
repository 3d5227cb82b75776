"""Curation after generation: filter rules, within-identity consistency, cross-identity dedup and balance.

Every step streams the candidate shards one at a time and writes a keep/reason table with one row per
candidate in candidate order (shard by shard, by key), so memory holds a shard plus per-identity state.
"""
