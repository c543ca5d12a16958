"""Triton kernels of the target-attention ops. Imported only by the dispatchers when the
triton backend is chosen, so CPU machines never need triton at import time."""
