"""Shapes of the shared test fixtures (tests/conftest.py), importable by test modules for their type hints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SampleCatalogue:
    """A database holding the sample manifest's 120 products, ingested once by the CLI with the stand-in network
    (category indexes for its 12-product categories included), to be cloned by tests that search it."""

    template: str
    #: The copy of examples/ (manifest and photos) it was ingested from: its photos' paths are stored. A test
    #: that moves photos away puts them back.
    shop: Path
    #: What ``imgsearch ingest --quiet`` printed while filling it.
    ingest_output: str
