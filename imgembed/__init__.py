"""imgembed: image similarity search, classification and comparison with CNN embeddings."""

__version__ = "0.1.0"
