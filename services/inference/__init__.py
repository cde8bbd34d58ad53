"""Inference: calls a tier's models and streams their answers."""
