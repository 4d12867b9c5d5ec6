"""Toy models: building them from their recipes (above training and evaluation)."""
