"""The annotation service: Label schemas with descriptions, LLM auto-labeling, the review queue."""
