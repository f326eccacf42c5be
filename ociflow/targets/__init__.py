"""Target kinds: one module each (registry, layout; archives later)."""
