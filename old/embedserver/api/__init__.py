"""HTTP layer: routes, error rendering and request metrics. Never touches MLX."""
