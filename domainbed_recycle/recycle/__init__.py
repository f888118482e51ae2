"""The model-recycling pipeline: spec -> stages (pure planning) -> launch -> combine -> figures."""
