"""How good are the search results? Retrieval metrics on a labelled folder tree.

:func:`evaluate` loads ``DIR/<label>/<image>`` into a throwaway database of its own on the configured server
(never the user's catalogue), asks the real search path (:func:`imgsearch.query.similar_to_sku`, PostgreSQL
with the HNSW index) for every image's nearest neighbours, itself excluded, and counts a result as relevant
when it has the query's label. The metric functions are pure and work on label lists, so benchmarks can
use them on rankings computed elsewhere.

Definitions (``rel_i`` is 1 when the result at rank ``i`` has the query's label, else 0):

* precision@k = ``sum(rel_1..rel_k) / k`` for one query (missing results count as irrelevant).
  *Micro*: the mean over all queries (large labels weigh more). *Macro*: the mean over labels of each
  label's mean (every label weighs the same).
* AP@k = ``sum over i <= k of precision@i * rel_i``, divided by ``min(k, R)`` where ``R`` is the number of
  other items with the query's label (the query itself excluded); mAP@k is its mean over queries (micro) or
  labels (macro). Queries whose label has no other item (``R = 0``) have no AP and are left out of mAP.
* recall@k of the indexed search = ``|indexed top k ∩ exact top k| / |exact top k|``: which share of the true
  nearest neighbours (exact cosine, no index) the HNSW index finds; averaged over queries.

Tuned mode (``folds``): the products are split into ``folds`` groups, stratified by label. For each group, a
search space is learnt (:func:`imgsearch.tuning.tune`) from the other groups' products only, and the group's
products are searched against the whole catalogue in it. So no query's label ever reaches the map it is
searched with, and the tuned scores are comparable with the untuned ones measured in the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from imgsearch import catalogue, db, embedded_server, query, schema, tuning, urls
from imgsearch.errors import DatabaseUnavailableError, ManifestError, TuningError
from imgsearch.ingest import CatalogueEntry, Failure, ingest, scan_folder

if TYPE_CHECKING:
    from imgsearch.embedding import Featurizer

#: Precision cut-offs reported (those not above the evaluation depth ``k``).
CUTOFFS = (1, 5, 10)

#: Prefix of the throwaway databases; a leftover one (a killed process) can be found and dropped by name.
DATABASE_PREFIX = "imgsearch_eval_"


def precision_at(relevant: Sequence[bool], k: int) -> float:
    """Share of the first ``k`` results that are relevant; fewer than ``k`` results count as misses."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return sum(bool(r) for r in relevant[:k]) / k


def average_precision_at(relevant: Sequence[bool], k: int, n_relevant: int) -> float | None:
    """AP@k: sum of precision@i at each relevant rank i <= k, over ``min(k, n_relevant)``; ``None`` if no
    item is relevant (``n_relevant`` counts the relevant items in the collection, the query excluded)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if n_relevant <= 0:
        return None
    hits = 0
    total = 0.0
    for i, rel in enumerate(relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / i
    return total / min(k, n_relevant)


def overlap_at(found: Sequence[str], truth: Sequence[str], k: int) -> float:
    """Recall of an approximate top ``k`` against the exact one: ``|found ∩ truth| / |truth|`` (first ``k``)."""
    expected = set(truth[:k])
    if not expected:
        return 1.0
    return len(expected & set(found[:k])) / len(expected)


def micro_macro(values: Iterable[tuple[str, float]]) -> tuple[float, float]:
    """(mean over all values, mean over labels of the per-label mean) of ``(label, value)`` pairs."""
    by_label: dict[str, list[float]] = defaultdict(list)
    for label, value in values:
        by_label[label].append(value)
    if not by_label:
        return 0.0, 0.0
    flat = [v for vs in by_label.values() for v in vs]
    return sum(flat) / len(flat), sum(sum(vs) / len(vs) for vs in by_label.values()) / len(by_label)


@dataclass(frozen=True)
class Scores:
    """Retrieval metrics of one ranking per query (see the module docstring for the definitions)."""

    k: int
    queries: int
    labels: int
    precision_micro: dict[int, float]
    precision_macro: dict[int, float]
    map_micro: float
    map_macro: float
    per_label_precision: dict[str, float]


def score_rankings(query_labels: Sequence[str], retrieved_labels: Sequence[Sequence[str]], k: int = 10) -> Scores:
    """Precision@1/5/10 (micro, macro) and mAP@k of rankings, relevance = same label as the query.

    Args:
        query_labels: the label of each query; the collection is exactly the queries (leave-one-out), so
            the number of relevant items of a query is the count of its label minus one.
        retrieved_labels: for each query, the labels of its results best first, the query itself excluded.
        k: evaluation depth (mAP@k; precision at the cut-offs of :data:`CUTOFFS` up to ``k``, and at ``k``).
    """
    if len(query_labels) != len(retrieved_labels):
        raise ValueError("one ranking per query is needed")
    counts: dict[str, int] = defaultdict(int)
    for label in query_labels:
        counts[label] += 1
    cutoffs = sorted({c for c in CUTOFFS if c <= k} | {k})
    precision: dict[int, list[tuple[str, float]]] = {c: [] for c in cutoffs}
    aps: list[tuple[str, float]] = []
    for label, ranking in zip(query_labels, retrieved_labels, strict=True):
        relevant = [r == label for r in ranking]
        for c in cutoffs:
            precision[c].append((label, precision_at(relevant, c)))
        ap = average_precision_at(relevant, k, counts[label] - 1)
        if ap is not None:
            aps.append((label, ap))
    micro = {c: micro_macro(precision[c])[0] for c in cutoffs}
    macro = {c: micro_macro(precision[c])[1] for c in cutoffs}
    map_micro, map_macro = micro_macro(aps)
    per_label: dict[str, list[float]] = defaultdict(list)
    for label, value in precision[min(5, k)]:
        per_label[label].append(value)
    return Scores(
        k=k,
        queries=len(query_labels),
        labels=len(counts),
        precision_micro=micro,
        precision_macro=macro,
        map_micro=map_micro,
        map_macro=map_macro,
        per_label_precision={label: sum(v) / len(v) for label, v in sorted(per_label.items())},
    )


@dataclass
class Evaluation:
    """What :func:`evaluate` measured on one labelled folder."""

    dataset: str
    scores: Scores
    recall: float
    #: The same metrics in cross-validated tuned search spaces, when asked for (``folds``).
    tuned: Scores | None = None
    folds: int = 0
    ingest_failures: list[Failure] = field(default_factory=list)
    ingest_seconds: float = 0.0
    search_seconds: float = 0.0
    preprocessing_version: str = ""
    model_name: str = ""

    @property
    def images_per_second(self) -> float:
        """Ingestion speed (decode + embed + store)."""
        return self.scores.queries / self.ingest_seconds if self.ingest_seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (the keys ``imgsearch eval --json`` prints)."""
        s = self.scores
        return {
            "dataset": self.dataset,
            "k": s.k,
            "images": s.queries,
            "labels": s.labels,
            "precision_micro": {f"@{c}": round(v, 6) for c, v in s.precision_micro.items()},
            "precision_macro": {f"@{c}": round(v, 6) for c, v in s.precision_macro.items()},
            "map_micro": round(s.map_micro, 6),
            "map_macro": round(s.map_macro, 6),
            "recall": round(self.recall, 6),
            "ingest_failures": len(self.ingest_failures),
            "failures": [{"sku": f.sku, "source": f.source, "reason": f.reason} for f in self.ingest_failures],
            "ingest_seconds": round(self.ingest_seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "search_seconds": round(self.search_seconds, 3),
            "model_name": self.model_name,
            "preprocessing_version": self.preprocessing_version,
            "per_label_precision": {label: round(v, 6) for label, v in s.per_label_precision.items()},
            "tuned": None if self.tuned is None else {"folds": self.folds, **_scores_dict(self.tuned)},
        }


def _scores_dict(s: Scores) -> dict[str, object]:
    return {
        "precision_micro": {f"@{c}": round(v, 6) for c, v in s.precision_micro.items()},
        "precision_macro": {f"@{c}": round(v, 6) for c, v in s.precision_macro.items()},
        "map_micro": round(s.map_micro, 6),
        "map_macro": round(s.map_macro, 6),
        "per_label_precision": {label: round(v, 6) for label, v in s.per_label_precision.items()},
    }


def evaluate(
    server_url: str,
    root: Path | str,
    featurizer: Featurizer,
    *,
    k: int = 10,
    folds: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Ingest ``root`` (``<label>/<image>``) into a throwaway database and measure search quality; with
    ``folds`` (2 or more), in cross-validated tuned search spaces too (see the module's docstring).

    The database ``imgsearch_eval_<random>`` is created on the server of ``server_url`` (the URL of any
    database there, e.g. the user's catalogue, which is not touched), migrated, filled, queried and always
    dropped afterwards, even when something fails. Images that cannot be ingested are reported in
    :attr:`Evaluation.ingest_failures` and simply are not part of the evaluation.

    Raises:
        ManifestError: ``root`` is not a folder or holds no labelled image.
        DatabaseUnavailableError: the server refuses to create the throwaway database.
        TuningError: ``folds`` is 1, or a fold's complement has too little to learn from.
    """
    if folds == 1 or folds < 0:
        raise TuningError(f"cross-validation needs 2 folds or more, got {folds}")
    root = Path(root)
    entries = list(scan_folder(root))
    if not any(isinstance(e, CatalogueEntry) for e in entries):
        raise ManifestError(f"{root}: no labelled images found (expected {root}/<label>/<image>)")
    say = progress or (lambda _message: None)
    with throwaway_database(server_url, say) as engine:
        say(f"ingesting {root}")
        report = ingest(engine, entries, featurizer, commit_every=512)
        say(f"searching ({report.added} images)")
        started = time.perf_counter()
        evaluation = _measure(engine, k)
        evaluation.search_seconds = time.perf_counter() - started
        if folds:
            say(f"tuned search spaces, {folds}-fold cross-validation")
            evaluation.tuned = tuned_scores(engine, k, folds, progress=say)
            evaluation.folds = folds
    evaluation.dataset = str(root)
    evaluation.ingest_failures = report.failures
    evaluation.ingest_seconds = report.seconds
    evaluation.preprocessing_version = featurizer.space.preprocessing_version
    evaluation.model_name = featurizer.space.model_name
    return evaluation


@contextlib.contextmanager
def throwaway_database(server_url: str, say: Callable[[str], None]) -> Iterator[sa.Engine]:
    """A new, migrated database ``imgsearch_eval_<random>`` on the server of ``server_url``, dropped afterwards
    whatever happens (an evaluation never touches the user's catalogue).

    Raises:
        DatabaseUnavailableError: the server refuses to create it.
    """
    admin = db.create_engine(server_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    name = DATABASE_PREFIX + secrets.token_hex(6)
    try:
        _create_database(admin, name)
        url = make_url(urls.normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)
        engine = db.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            say(f"throwaway database {name}: migrating")
            schema.upgrade(engine)
            yield engine
        finally:
            engine.dispose()
            _drop_database(admin, name)
    finally:
        admin.dispose()


def _create_database(admin: sa.Engine, name: str) -> None:
    try:
        with admin.connect() as conn:
            drop_abandoned_databases(conn)
            # The embedded server's template has pgvector already: its owner role (not a superuser) may clone it.
            template = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname = :t AND datistemplate"),
                {"t": embedded_server.EVAL_TEMPLATE},
            ).scalar()
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
            # Who made it, so that a later run can tell an abandoned one (its process killed) from a live one.
            owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
            conn.execute(sa.text(f"COMMENT ON DATABASE \"{name}\" IS '{owner}'"))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(
            f"cannot create the throwaway evaluation database on this server ({reason}): the evaluation never "
            "uses the live catalogue, so give the user CREATEDB or point --database-url at a server where it may"
        ) from None


#: A throwaway database made on another host is taken as abandoned after this long (seconds).
ABANDONED_AFTER = 24 * 3600


def drop_abandoned_databases(conn: sa.Connection) -> list[str]:
    """Drop the throwaway databases of evaluations whose process is gone (killed before it could clean up).

    One made on this host is abandoned when its process no longer runs; one made elsewhere, after a day.
    Returns the names dropped.
    """
    rows = conn.execute(
        sa.text(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE starts_with(datname, :p)"
        ),
        {"p": DATABASE_PREFIX},
    ).all()
    dropped = []
    for name, comment in rows:
        try:
            owner = json.loads(comment or "{}")
        except ValueError:
            continue  # not one of ours after all
        if not isinstance(owner, dict) or not {"host", "pid", "started"} <= owner.keys():
            continue
        if owner["host"] == socket.gethostname():
            abandoned = not _process_alive(int(owner["pid"]))
        else:
            abandoned = time.time() - float(owner["started"]) > ABANDONED_AFTER
        if abandoned:
            try:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except DBAPIError:
                continue  # someone else's to drop; this run does not need it gone
            dropped.append(name)
    return dropped


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _labels(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sku, category FROM products ORDER BY sku")).all()
    return {sku: category for sku, category in rows}


def assign_folds(labels: Mapping[str, str], folds: int, seed: int = 0) -> dict[str, int]:
    """Each item's fold, stratified: every label's items (in a seeded order) are dealt to the folds in turn,
    so each fold holds about 1/folds of every label."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for item, label in labels.items():
        by_label[label].append(item)
    assignment: dict[str, int] = {}
    offset = 0
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
        for position, item in enumerate(items):
            assignment[item] = (offset + position) % folds
        offset += len(items)  # labels smaller than ``folds`` do not all land in fold 0
    return assignment


def tuned_scores(
    engine: sa.Engine,
    k: int,
    folds: int,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Scores:
    """Precision and mAP of every product's search in a space learnt without its fold (k-fold over products,
    stratified by category), against the whole catalogue, through the SQL search path. Leaves the catalogue
    with no tuned space.

    Raises:
        TuningError: fewer than 2 folds, or a fold's complement has too little to learn from.
    """
    if folds < 2:
        raise TuningError(f"cross-validation needs 2 folds or more, got {folds}")
    labels = _labels(engine)
    assignment = assign_folds(labels, folds, seed)
    rankings: dict[str, list[str]] = {}
    try:
        for fold in range(folds):
            held_out = [sku for sku, f in assignment.items() if f == fold]
            if progress is not None:
                progress(f"fold {fold + 1}/{folds}: learning without its {len(held_out)} products, searching them")
            tuning.tune(engine, sample=None, exclude_skus=held_out)
            for sku in held_out:
                found = query.similar_to_sku(engine, sku, k, in_stock_only=False)
                rankings[sku] = [r.category for r in found]
    finally:
        tuning.drop(engine)
    skus = list(labels)
    return score_rankings([labels[s] for s in skus], [rankings[s] for s in skus], k)


def _measure(engine: sa.Engine, k: int) -> Evaluation:
    labels = _labels(engine)
    query_labels: list[str] = []
    rankings: list[list[str]] = []
    recalls: list[float] = []
    for sku, label in labels.items():
        # The real search path: the product's stored vector through the SQL function and the HNSW index.
        indexed = query.similar_to_sku(engine, sku, k, in_stock_only=False)
        vector = catalogue.get_embedding(engine, sku)
        assert vector is not None
        exact = query.search(engine, vector, k, in_stock_only=False, exclude_skus=[sku], exact=True)
        query_labels.append(label)
        rankings.append([r.category for r in indexed])
        recalls.append(overlap_at([r.sku for r in indexed], [r.sku for r in exact], k))
    scores = score_rankings(query_labels, rankings, k)
    return Evaluation(dataset="", scores=scores, recall=sum(recalls) / len(recalls) if recalls else 1.0)
