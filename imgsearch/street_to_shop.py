"""How often a shopper's photo finds the very product it shows: the street-to-shop evaluation.

``imgsearch eval --queries QUERIES.csv`` ingests a catalogue (a folder tree or a manifest) into a throwaway
database, searches every query photo (``image,sku[,kind]``: a photo and the SKU of the product it shows) the
way the web page does (:func:`imgsearch.query.search_image`: global vector, then local features and geometric
verification), and reports where the right product came:

* R@k: the share of queries whose product is among the first k results; MRR: the mean of 1/rank (0 when it is
  not in the first ``k``).
* The same for the global vector alone (no verification), from the same vectors in the same run: the anchor.
* Exact matches: the share of queries whose first result is a verified ``exact`` match, and how often that
  first result is the right product (its precision); and R@1 over the other queries (``similar``).

Every figure is also given per ``kind`` (e.g. printed, packaged, produce), so that one set cannot hide another.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch import local_features, query
from imgsearch.errors import ImageError, ManifestError
from imgsearch.evaluation import throwaway_database
from imgsearch.images import photo_size
from imgsearch.ingest import Failure, ingest
from imgsearch.sources import CatalogueEntry, LabelledQuery, read_manifest, read_queries, scan_folder

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from imgsearch.embedding import Featurizer

#: Cut-offs of R@k reported.
RECALL_CUTOFFS = (1, 5, 10)


@dataclass
class Ranks:
    """Where the right product came for a group of queries (``None``: not in the first ``k``)."""

    verified: list[int | None] = field(default_factory=list)
    global_only: list[int | None] = field(default_factory=list)
    #: Per query: whether the first verified result was an ``exact`` match.
    exact_first: list[bool] = field(default_factory=list)

    def add(self, verified: int | None, global_only: int | None, exact_first: bool) -> None:
        """One query's outcome."""
        self.verified.append(verified)
        self.global_only.append(global_only)
        self.exact_first.append(exact_first)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary: R@k and MRR with and without verification, exact-match rate and precision."""
        exact = [r for r, e in zip(self.verified, self.exact_first, strict=True) if e]
        similar = [r for r, e in zip(self.verified, self.exact_first, strict=True) if not e]
        return {
            "queries": len(self.verified),
            "recall": _recalls(self.verified),
            "mrr": _mrr(self.verified),
            "global_recall": _recalls(self.global_only),
            "global_mrr": _mrr(self.global_only),
            "exact_first_rate": round(len(exact) / len(self.verified), 4) if self.verified else 0.0,
            "exact_first_precision": round(sum(r == 1 for r in exact) / len(exact), 4) if exact else None,
            "similar_first_recall@1": round(sum(r == 1 for r in similar) / len(similar), 4) if similar else None,
        }


def _recalls(ranks: Sequence[int | None]) -> dict[str, float]:
    n = len(ranks) or 1
    return {f"@{c}": round(sum(r is not None and r <= c for r in ranks) / n, 4) for c in RECALL_CUTOFFS}


def _mrr(ranks: Sequence[int | None]) -> float:
    return round(sum(1.0 / r for r in ranks if r is not None) / (len(ranks) or 1), 4)


@dataclass
class StreetToShop:
    """What :func:`evaluate_queries` measured."""

    catalogue: str
    queries_file: str
    products: int
    all: Ranks
    by_kind: dict[str, Ranks]
    failures: list[Failure]
    candidates: int
    seconds_per_query: list[float]
    ingest_seconds: float

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (what ``imgsearch eval --queries --json`` prints)."""
        times = sorted(self.seconds_per_query) or [0.0]
        return {
            "catalogue": self.catalogue,
            "queries_file": self.queries_file,
            "products": self.products,
            "candidates": self.candidates,
            **self.all.as_dict(),
            "by_kind": {kind: ranks.as_dict() for kind, ranks in sorted(self.by_kind.items())},
            "failures": [{"sku": f.sku, "source": f.source, "reason": f.reason} for f in self.failures],
            "query_seconds_p50": round(statistics.median(times), 4),
            "query_seconds_p90": round(times[int(0.9 * (len(times) - 1))], 4),
            "ingest_seconds": round(self.ingest_seconds, 3),
        }


def catalogue_entries(source: Path | str) -> list[CatalogueEntry | Failure]:
    """A catalogue from a folder tree (``<category>/<image>``) or a CSV manifest.

    Raises:
        ManifestError: nothing usable there.
    """
    source = Path(source)
    entries = list(scan_folder(source) if source.is_dir() else read_manifest(source))
    if not any(isinstance(e, CatalogueEntry) for e in entries):
        raise ManifestError(f"{source}: no products found")
    return entries


def evaluate_queries(
    server_url: str,
    catalogues: Sequence[Path | str],
    queries_files: Sequence[Path | str],
    featurizer: Featurizer,
    *,
    k: int = 10,
    candidates: int = query.VERIFY_CANDIDATES,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[StreetToShop]:
    """Ingest the catalogues (several: the products sought and distractors) into one throwaway database and
    search every labelled query photo of each query file (at most ``limit`` of each, drawn at random with a
    fixed seed, so that runs compare); one report per file (see the module's docstring).

    Raises:
        ManifestError: a catalogue or a query file has nothing usable, or cannot be read.
        DatabaseUnavailableError: the server refuses to create the throwaway database.
    """
    say = progress or (lambda _message: None)
    entries: list[CatalogueEntry | Failure] = []
    for source in catalogues:
        entries += catalogue_entries(source)
    known = {e.sku for e in entries if isinstance(e, CatalogueEntry)}
    labelled = [read_labelled(path, known) for path in queries_files]
    if limit is not None:
        labelled = [(_sample(queries, limit), failures) for queries, failures in labelled]
    reports = []
    with throwaway_database(server_url, say) as engine:
        say(f"ingesting {', '.join(map(str, catalogues))}")
        report = ingest(engine, entries, featurizer, commit_every=512)
        for path, (queries, failures) in zip(queries_files, labelled, strict=True):
            say(f"searching {len(queries)} query photos of {path} ({report.added} products)")
            found = measure(engine, featurizer, queries, k=k, candidates=candidates, progress=say)
            found.catalogue, found.queries_file = ", ".join(map(str, catalogues)), str(path)
            found.products = report.added
            found.failures = report.failures + failures + found.failures
            found.ingest_seconds = report.seconds
            reports.append(found)
    return reports


def read_labelled(path: Path | str, known: set[str]) -> tuple[list[LabelledQuery], list[Failure]]:
    """The usable query rows of ``path`` whose product is in the catalogue (``known`` SKUs), and the others as
    failures.

    Raises:
        ManifestError: the file cannot be read, or has no usable row.
    """
    rows = list(read_queries(path))
    failures = [r for r in rows if isinstance(r, Failure)]
    queries = [r for r in rows if isinstance(r, LabelledQuery)]
    if not queries:
        raise ManifestError(f"{path}: no usable query rows (columns: image, sku[, kind])")
    unknown = [q for q in queries if q.sku not in known]
    failures += [Failure(q.sku, q.where, f"sku {q.sku!r} is not in the catalogue") for q in unknown]
    return [q for q in queries if q.sku in known], failures


def measure(
    engine: Engine,
    featurizer: Featurizer,
    queries: Sequence[LabelledQuery],
    *,
    k: int = 10,
    candidates: int = query.VERIFY_CANDIDATES,
    progress: Callable[[str], None] | None = None,
) -> StreetToShop:
    """Search every query photo in the catalogue of ``engine``, verified (the web page's search) and by the
    global vector alone from the same vector; photos that cannot be read are failures."""
    say = progress or (lambda _message: None)
    everything, by_kind = Ranks(), defaultdict(Ranks)
    times: list[float] = []
    failures: list[Failure] = []
    for number, q in enumerate(queries, start=1):
        started = time.perf_counter()
        try:
            vector = featurizer.embed_image(q.image)
            features = local_features.features_of(q.image, local_features.QUERY_KEYPOINTS)
            size = photo_size(q.image)
        except ImageError as exc:
            failures.append(Failure(q.sku, q.where, str(exc)))
            continue
        verified = query.search_verified(
            engine, vector, features, k, in_stock_only=False, candidates=candidates, size=size
        )
        times.append(time.perf_counter() - started)
        global_only = query.search(engine, vector, k, in_stock_only=False)
        exact_first = bool(verified) and verified[0].match == "exact"
        outcome = (_rank(verified, q.sku), _rank(global_only, q.sku), exact_first)
        everything.add(*outcome)
        by_kind[q.kind].add(*outcome)
        if number % 100 == 0:
            say(f"  {number}/{len(queries)}")
    return StreetToShop(
        catalogue="",
        queries_file="",
        products=0,
        all=everything,
        by_kind=dict(by_kind),
        failures=failures,
        candidates=candidates,
        seconds_per_query=times,
        ingest_seconds=0.0,
    )


def _sample(queries: list[LabelledQuery], limit: int) -> list[LabelledQuery]:
    if len(queries) <= limit:
        return queries
    chosen = sorted(random.Random(0).sample(range(len(queries)), limit))
    return [queries[i] for i in chosen]


def _rank(results: Sequence[query.SearchResult], sku: str) -> int | None:
    return next((i for i, r in enumerate(results, start=1) if r.sku == sku), None)
