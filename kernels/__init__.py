"""Fused ops for target attention: one public dispatcher per op, a PyTorch reference
(also the CPU path) and a Triton kernel. Triton is imported lazily, so this package
imports on machines without a GPU or without triton installed."""
