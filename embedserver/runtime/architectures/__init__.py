"""Model architectures in MLX. Each returns hidden states [batch, length, hidden] for right-padded ids."""
