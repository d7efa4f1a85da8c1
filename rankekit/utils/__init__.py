"""rankekit.utils."""
