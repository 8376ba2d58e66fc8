"""Deprecated name of :mod:`imgsearch.tables` (the SQLAlchemy tables), kept for one release."""

import warnings

from imgsearch.tables import *  # noqa: F403
from imgsearch.tables import Base  # noqa: F401

warnings.warn(
    "imgsearch.models is now imgsearch.tables; the old name goes in the next release", DeprecationWarning, stacklevel=2
)
