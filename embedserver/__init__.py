"""embedserver: a micro-batching embedding server for Qwen3-Embedding models on MLX.

Importing the package does nothing but define the version: MLX, native libraries and thread pools are
set up by the parts that use them (embedserver/runtime/__init__.py for MLX), so the front-end processes,
which never run a model, never load them.
"""

__version__ = "0.1.0"
