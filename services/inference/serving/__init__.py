"""Serving machinery of the inference service: artifacts on local disk, the model cache, micro-batching."""
