"""imgsearch: visual product search for online shops (VGG16 embeddings in PostgreSQL + pgvector).

The website backend needs :func:`connect` and the functions in :mod:`imgsearch.query`; the catalogue team's
writes are in :mod:`imgsearch.catalogue` and :mod:`imgsearch.ingest`; :class:`imgsearch.embedding.Featurizer`
turns photos into vectors (it loads TensorFlow, so it is not imported here).
"""

from importlib.metadata import PackageNotFoundError, version

from imgsearch import catalogue, query
from imgsearch.config import Settings
from imgsearch.db import connect
from imgsearch.errors import ImgsearchError

try:
    __version__ = version("imgsearch")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["ImgsearchError", "Settings", "catalogue", "connect", "query"]
