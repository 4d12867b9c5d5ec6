"""Model references, the one model loader, and the modules XBT adds to a model."""
