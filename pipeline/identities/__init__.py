"""Identity sampling: canonical latents and their variants, deterministic from (seed, identity)."""
