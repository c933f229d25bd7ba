"""modelyard: a tracked, reproducible training pipeline."""
