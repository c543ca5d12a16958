"""PyTorch reference implementations (exact on CPU, differentiable by autograd)."""
