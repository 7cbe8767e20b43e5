"""Production and test models."""
