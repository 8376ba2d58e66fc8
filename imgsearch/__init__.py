"""imgsearch: visual product search for online shops (VGG16 embeddings in PostgreSQL + pgvector).

:class:`Catalogue` is the one handle: searching, loading and keeping a shop's catalogue (the CLI and the HTTP
service stand on it). Underneath, :mod:`imgsearch.query` holds the searches, :mod:`imgsearch.catalogue` and
:mod:`imgsearch.ingest` the writes, and :class:`imgsearch.embedding.Featurizer` turns photos into vectors (it
loads TensorFlow on first use, so ``import imgsearch`` stays fast).
"""

from importlib.metadata import PackageNotFoundError, version

from imgsearch import catalogue, query
from imgsearch.api import Catalogue
from imgsearch.config import Settings
from imgsearch.db import connect
from imgsearch.errors import ImgsearchError

try:
    __version__ = version("imgsearch")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["Catalogue", "ImgsearchError", "Settings", "catalogue", "connect", "query"]
