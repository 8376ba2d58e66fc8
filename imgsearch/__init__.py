"""imgsearch: visual product search for online shops (VGG16 embeddings in PostgreSQL + pgvector)."""

__version__ = "0.1.0"
