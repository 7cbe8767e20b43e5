"""CPU kernels the engine uses where a product only needs to be close (int8 copies) or fast (oneDNN)."""
