"""The adapter registry: character weights (LoRA, hybrid, full as a delta, composites) and their versions."""
