"""Exceptions raised by the imgsearch library.

Every error a user can cause derives from :class:`ImgsearchError`, so a front end can catch one class and show
its message as a single line.
"""

from __future__ import annotations


class ImgsearchError(Exception):
    """Base class for errors caused by input, configuration or the state of the catalogue."""


class ConfigurationError(ImgsearchError):
    """A setting is missing or invalid (database URL, weights file, batch size...)."""


class DatabaseUnavailableError(ImgsearchError):
    """The PostgreSQL server cannot be reached or started."""


class SchemaError(ImgsearchError):
    """The database schema is missing or older than this version of imgsearch (run `imgsearch db upgrade`)."""


class EmbeddingSpaceMismatchError(ImgsearchError):
    """Vectors from a different model, weights or preprocessing would be mixed into the same catalogue."""


class InvalidQueryError(ImgsearchError, ValueError):
    """A search argument is invalid: wrong vector dimension, NaN, k out of range, negative price..."""


class InvalidProductError(InvalidQueryError):
    """A product cannot be stored as given: a field too long, empty or not text, a bad price or vector."""


class UnknownSkuError(ImgsearchError, LookupError):
    """A SKU that is not in the catalogue was named."""


class UnknownCategoryError(ImgsearchError, LookupError):
    """A category that has no products (or no category index, when dropping one) was named."""


class ImageError(ImgsearchError):
    """An image file cannot be read or decoded (missing, corrupt, not an image, too large...)."""


class WeightsUnavailableError(ConfigurationError):
    """The VGG16 weights can be neither loaded from the configured file nor downloaded."""


class ManifestError(ImgsearchError):
    """A catalogue manifest (CSV) cannot be used at all: missing file, missing required columns."""


class OutputError(ImgsearchError):
    """An output file (contact sheet, histogram, report) cannot be written."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer imgsearch than the one installed: upgrade the package."""


class PermissionDeniedError(ImgsearchError):
    """The database role lacks a privilege the operation needs (a reader role cannot write, for instance)."""


class ReadOnlyDatabaseError(ImgsearchError):
    """A write reached a read-only database (a replica for searches): writes go to the primary."""


class BusyError(ImgsearchError):
    """The catalogue stayed locked by another session (a schema change or index build waited too long)."""


class TuningError(ImgsearchError):
    """The catalogue cannot be tuned as asked (too little to learn from, bad parameters)."""


class StaleVocabularyError(ImgsearchError):
    """The visual vocabulary a photo's words were assigned with has just been replaced: assign them again."""
