"""Deprecated name of :mod:`imgsearch.embedded_server` (the embedded PostgreSQL server), kept for one release."""

import warnings

from imgsearch.embedded_server import (  # noqa: F401
    ACCESS_ROLES,
    ADMIN_ROLE,
    DATABASE_NAME,
    READER_ROLE,
    WRITER_ROLE,
    ReplicaStatus,
    ServerStatus,
    binary,
    data_dir,
    replica_home,
    replica_status,
    start,
    start_replica,
    status,
    stop,
    stop_replica,
    url_for,
)

warnings.warn(
    "imgsearch.embedded is now imgsearch.embedded_server; the old name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
