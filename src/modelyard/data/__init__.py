"""Data layer: reading sources, validating them with Great Expectations, splitting."""
