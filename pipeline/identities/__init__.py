"""Identity sampling, within-identity consistency and cross-identity dedup."""
