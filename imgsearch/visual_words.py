"""Visual words: a second source of candidates for a verified photo search, by shared local features.

The global VGG16 vector ranks a phone photo of a printed product (a DVD cover, a box) below dozens of look-alikes
often enough that the exact product misses the top 50 that verification checks. The mobile visual search
literature's answer (Sivic & Zisserman's "Video Google", Nister & Stewenius' vocabulary tree) is an inverted
index of quantised local descriptors: each catalogue photo's SIFT descriptors become "visual words", and a query
proposes the photos that share the most (idf-weighted) words with it, whatever its global vector says.

The vocabulary is learnt without labels from the catalogue's own stored features (:func:`build`): two-level
k-means on RootSIFT descriptors (a coarse level, then each coarse cell split again), so that a query's thousand
descriptors are assigned in a few milliseconds. Each photo's distinct words go into ``visual_word_postings``
(one row per word and photo, read by index-only scans); ``imgsearch_word_candidates`` ranks products by shared
words in one round trip, idf from each word's photo count taken when the vocabulary was activated
(``visual_word_frequencies``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from imgsearch.db import transaction, translate_error
from imgsearch.errors import StaleVocabularyError
from imgsearch.local_features import DESCRIPTOR_BYTES, EXTRACTOR, LocalFeatures, root_sift

Bind = Engine | Connection

#: Coarse cells of the two-level vocabulary, and words per coarse cell: 65,536 words. Measured on the street-to-shop
#: sets (benchmarks/results/visual-words.md): more words, fewer false shared words; 8k words find the right
#: product in the top 10 for 97% of cover photos, 65k for 100%.
COARSE = 256
FINE = 256
#: Descriptors the vocabulary is learnt from (a sample of the catalogue's photos): bounds time and memory.
SAMPLE_DESCRIPTORS = 200_000
#: Photos read for the sample: as many as hold this many times the descriptors wanted (each gives a share).
SAMPLE_SPREAD = 4
#: Lloyd iterations of each k-means (the coarse one and every fine one).
ITERATIONS = 12
#: Coarse cells a query descriptor's word is looked for in: more find a nearer word (fewer quantisation errors:
#: 3 rather than 1 lifts recall by a few points for ~5 ms). Catalogue photos use 1 (more did not help).
QUERY_PROBES = 3
CATALOGUE_PROBES = 1
#: Descriptors assigned in one matrix product (bounds memory when a whole catalogue is assigned).
_CHUNK = 8192


@dataclass(frozen=True, eq=False)  # arrays: compared by identity
class Vocabulary:
    """A two-level vocabulary: ``coarse`` (C, 128) and ``fine`` (C, F, 128) centroids of RootSIFT descriptors;
    word ``c * F + f`` is fine centroid ``f`` of coarse cell ``c``. ``id`` is its row in the database (None
    before it is stored)."""

    coarse: np.ndarray
    fine: np.ndarray
    extractor: str = EXTRACTOR
    id: int | None = None
    _coarse_half: np.ndarray = field(init=False, repr=False, compare=False)
    _fine_half: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Nearest centroid by Euclidean distance = largest x.c - |c|^2 / 2: one matrix product per level.
        object.__setattr__(self, "_coarse_half", 0.5 * np.einsum("ij,ij->i", self.coarse, self.coarse))
        object.__setattr__(self, "_fine_half", 0.5 * np.einsum("ijk,ijk->ij", self.fine, self.fine))

    @property
    def size(self) -> int:
        """Number of words."""
        return int(self.fine.shape[0] * self.fine.shape[1])

    def assign(self, descriptors: np.ndarray, probes: int = CATALOGUE_PROBES) -> np.ndarray:
        """The word of every descriptor ((n, 128) uint8 SIFT), int32 (n,): the nearest fine centroid within the
        ``probes`` nearest coarse cells."""
        out = np.empty(len(descriptors), np.int32)
        for start in range(0, len(descriptors), _CHUNK):
            out[start : start + _CHUNK] = self._assign(root_sift(descriptors[start : start + _CHUNK]), probes)
        return out

    def _assign(self, x: np.ndarray, probes: int) -> np.ndarray:
        n = len(x)
        if not n:
            return np.zeros(0, np.int32)
        probes = max(1, min(probes, len(self.coarse)))
        scores = x @ self.coarse.T - self._coarse_half
        if probes == 1:
            cells = scores.argmax(axis=1)[:, None]
        else:
            cells = np.argpartition(-scores, probes - 1, axis=1)[:, :probes]
        best = np.full(n, -np.inf, np.float32)
        word = np.zeros(n, np.int32)
        fine = self.fine.shape[1]
        rows = np.repeat(np.arange(n), cells.shape[1])
        flat = cells.ravel()
        order = np.argsort(flat, kind="stable")
        flat, rows = flat[order], rows[order]
        bounds = np.flatnonzero(np.diff(flat)) + 1
        for group in np.split(np.arange(len(flat)), bounds):
            cell = int(flat[group[0]])
            members = rows[group]
            s = x[members] @ self.fine[cell].T - self._fine_half[cell]
            f = s.argmax(axis=1)
            value = s[np.arange(len(members)), f]
            better = value > best[members]
            best[members[better]] = value[better]
            word[members[better]] = cell * fine + f[better]
        return word

    def pack(self) -> tuple[bytes, bytes]:
        """The stored form: (coarse, fine) centroids as little-endian float16 bytes (RootSIFT components lie in
        [0, 1]; half precision moves no descriptor to another word that matters)."""
        return self.coarse.astype("<f2").tobytes(), self.fine.astype("<f2").tobytes()

    @classmethod
    def unpack(
        cls, coarse: bytes, fine: bytes, coarse_cells: int, fine_words: int, extractor: str, id: int | None = None
    ) -> Vocabulary:
        """A vocabulary from :meth:`pack`'s bytes (as read from the database)."""
        c = np.frombuffer(coarse, "<f2").astype(np.float32).reshape(coarse_cells, DESCRIPTOR_BYTES)
        f = np.frombuffer(fine, "<f2").astype(np.float32).reshape(coarse_cells, fine_words, DESCRIPTOR_BYTES)
        return cls(c, f, extractor, id)


def words_of(vocabulary: Vocabulary, features: LocalFeatures, probes: int = CATALOGUE_PROBES) -> np.ndarray:
    """The distinct words of a photo's features, sorted, int32 (what is stored for a catalogue photo)."""
    return np.unique(vocabulary.assign(features.descriptors, probes)).astype(np.int32)


def words_of_photos(
    vocabulary: Vocabulary, features: Sequence[LocalFeatures], probes: int = CATALOGUE_PROBES
) -> list[np.ndarray]:
    """:func:`words_of` for many photos at once: their descriptors are assigned together, so that each coarse
    cell's fine centroids meet all of the batch's descriptors in one matrix product instead of a few of one photo's
    (3.5x faster on the sample catalogue's photos, the same words)."""
    if not features:
        return []
    words = vocabulary.assign(np.concatenate([f.descriptors for f in features]), probes)
    ends = np.cumsum([len(f.descriptors) for f in features])[:-1]
    return [np.unique(w).astype(np.int32) for w in np.split(words, ends)]


def query_words(vocabulary: Vocabulary, features: LocalFeatures, probes: int = QUERY_PROBES) -> list[int]:
    """The distinct words of a shopper's photo, as :func:`word_candidates` takes them."""
    return words_of(vocabulary, features, probes).tolist()


# -- learning ---------------------------------------------------------------------------------------------------


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(x), np.int64)
    for start in range(0, len(x), _CHUNK):
        out[start : start + _CHUNK] = (x[start : start + _CHUNK] @ centroids.T - half).argmax(axis=1)
    return out


def kmeans(x: np.ndarray, k: int, iterations: int = ITERATIONS, seed: int = 0) -> np.ndarray:
    """``k`` centroids of the rows of ``x`` (float32) by Lloyd's algorithm from a random sample of rows; an
    emptied cluster is re-seeded with a random row. Fewer rows than ``k``: the rows, repeated to fill ``k``
    (duplicates are never nearer than the first copy, so they only waste words)."""
    rng = np.random.default_rng(seed)
    if len(x) <= k:
        return x[np.resize(np.arange(len(x)), k)].copy() if len(x) else np.zeros((k, x.shape[1]), np.float32)
    centroids = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        label = _nearest(x, centroids)
        counts = np.bincount(label, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, label, x) if len(x) < 4 * k else _add_rows(sums, label, x)
        empty = counts == 0
        centroids[~empty] = sums[~empty] / counts[~empty, None]
        if empty.any():
            centroids[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
    return centroids


def _add_rows(sums: np.ndarray, label: np.ndarray, x: np.ndarray) -> None:
    # Sums per cluster by sorting (np.add.at is slow for many rows).
    order = np.argsort(label, kind="stable")
    sorted_labels = label[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_labels) != 0])
    sums[sorted_labels[starts]] = np.add.reduceat(x[order], starts, axis=0)


def learn(
    descriptors: np.ndarray,
    coarse: int = COARSE,
    fine: int = FINE,
    iterations: int = ITERATIONS,
    seed: int = 0,
    extractor: str = EXTRACTOR,
) -> Vocabulary:
    """A two-level vocabulary of ``coarse * fine`` words learnt from SIFT ``descriptors`` ((n, 128) uint8)."""
    x = root_sift(descriptors)
    top = kmeans(x, coarse, iterations, seed)
    label = _nearest(x, top)
    leaves = np.empty((coarse, fine, DESCRIPTOR_BYTES), np.float32)
    for cell in range(coarse):
        members = x[label == cell]
        # A coarse cell left empty by the last iteration gets its own centroid as every word (never nearest).
        leaves[cell] = kmeans(members, fine, iterations, seed + 1 + cell) if len(members) else top[cell]
    return Vocabulary(top.astype(np.float32), leaves, extractor)


# -- the database -----------------------------------------------------------------------------------------------

_ACTIVE_ID = sa.text("SELECT id FROM visual_vocabularies WHERE active AND extractor = :extractor")
_VOCABULARY = sa.text(
    "SELECT id, extractor, coarse_cells, fine_words, coarse, fine FROM visual_vocabularies WHERE id = :id"
)
_INSERT_VOCABULARY = sa.text(
    "INSERT INTO visual_vocabularies (extractor, coarse_cells, fine_words, descriptors, coarse, fine) "
    "VALUES (:extractor, :coarse_cells, :fine_words, :descriptors, :coarse, :fine) RETURNING id"
)
# Each word's photos when a vocabulary is activated (visual_word_frequencies).
_COUNT_WORDS = sa.text(
    "INSERT INTO visual_word_frequencies (vocabulary_id, word, photos) "
    "SELECT :id, word, count(*) FROM visual_word_postings WHERE vocabulary_id = :id GROUP BY word"
)
# A photo's words replace any it had under this vocabulary; features changed or removed since they were read
# (another xmin) get none, so that no word outlives the descriptors it came from. A photo whose words another
# writer (a concurrent build's catch-up) wrote meanwhile keeps those: only the photos inserted here get postings.
_DELETE_WORDS = sa.text(
    "DELETE FROM visual_word_photos WHERE vocabulary_id = :vocabulary AND image_id = ANY(CAST(:ids AS bigint[]))"
)
_INSERT_PHOTOS = sa.text(
    """
    INSERT INTO visual_word_photos (image_id, vocabulary_id, words)
    SELECT u.image_id, :vocabulary, u.words
    FROM unnest(CAST(:ids AS bigint[]), CAST(:counts AS integer[]), CAST(:versions AS bigint[]))
         AS u(image_id, words, version)
    JOIN photo_features f ON f.image_id = u.image_id AND f.extractor = :extractor
    WHERE u.words > 0 AND (u.version IS NULL OR f.xmin::text::bigint = u.version)
    ORDER BY u.image_id
    ON CONFLICT (image_id, vocabulary_id) DO NOTHING
    RETURNING image_id
    """
)
_INSERT_POSTINGS = sa.text(
    """
    INSERT INTO visual_word_postings (vocabulary_id, word, image_id)
    SELECT :vocabulary, u.word, u.image_id
    FROM unnest(CAST(:ids AS bigint[]), CAST(:words AS integer[])) AS u(image_id, word)
    JOIN unnest(CAST(:stored AS bigint[])) AS s(image_id) ON s.image_id = u.image_id
    ORDER BY u.word, u.image_id
    """
)
# Photos with features of the vocabulary's extractor but no words under it, in id order from a keyset.
_MISSING = sa.text(
    """
    SELECT f.image_id, f.width, f.height, f.points, f.descriptors, f.xmin::text::bigint AS version
    FROM photo_features f
    WHERE f.extractor = :extractor AND f.image_id > :after
      AND NOT EXISTS (
          SELECT 1 FROM visual_word_photos w WHERE w.image_id = f.image_id AND w.vocabulary_id = :vocabulary)
    ORDER BY f.image_id LIMIT :batch
    """
)
_CANDIDATES = sa.text(
    "SELECT * FROM imgsearch_word_candidates(CAST(:words AS integer[]), :n, :extractor, CAST(:categories AS text[]), "
    ":in_stock_only, CAST(:max_price AS numeric), CAST(:exclude AS text[]), :vocabulary, CAST(:query AS vector))"
)
#: Photos whose words are assigned and written in one transaction by :func:`build` and :func:`catch_up`.
BATCH = 500

_cache: dict[tuple[str, int], Vocabulary] = {}
_cache_lock = threading.Lock()


def _url(bind: Bind) -> str:
    engine = bind if isinstance(bind, Engine) else bind.engine
    return engine.url.render_as_string(hide_password=True)


def load_vocabulary(bind: Bind, extractor: str = EXTRACTOR) -> Vocabulary | None:
    """The active vocabulary of ``extractor`` (None without one). One small query says which is active; its
    centroids (megabytes) are read once per database and kept in memory."""
    with transaction(bind) as conn:
        vocabulary_id = conn.execute(_ACTIVE_ID, {"extractor": extractor}).scalar()
        if vocabulary_id is None:
            return None
        key = (_url(bind), int(vocabulary_id))
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None:
            return cached
        row = conn.execute(_VOCABULARY, {"id": vocabulary_id}).one()
    vocabulary = Vocabulary.unpack(
        bytes(row.coarse), bytes(row.fine), row.coarse_cells, row.fine_words, row.extractor, row.id
    )
    with _cache_lock:
        # Only the newest vocabulary of each database stays.
        for old in [k for k in _cache if k[0] == key[0]]:
            del _cache[old]
        _cache[key] = vocabulary
    return vocabulary


#: The vocabulary last seen active in each database (None: none), by URL and extractor.
_known: dict[tuple[str, str], Vocabulary | None] = {}


def photo_words(
    bind: Bind, features: LocalFeatures, extractor: str = EXTRACTOR, *, refresh: bool = False
) -> tuple[int | None, list[int] | None]:
    """A query photo's words and the id of the vocabulary they were assigned with, under the vocabulary this
    process last saw active (no round trip once known; ``(None, None)`` without one). A search passes the id to
    the database, which refuses a replaced vocabulary, or none when one exists (:class:`StaleVocabularyError`):
    call again with ``refresh``."""
    key = (_url(bind), extractor)
    with _cache_lock:
        known = key in _known
        vocabulary = _known.get(key)
    if refresh or not known:
        vocabulary = load_vocabulary(bind, extractor)
        with _cache_lock:
            _known[key] = vocabulary
    if vocabulary is None:
        return None, None
    return vocabulary.id, query_words(vocabulary, features)


def _store(
    conn: Connection,
    vocabulary: Vocabulary,
    image_ids: Sequence[int],
    features: Sequence[LocalFeatures],
    versions: Sequence[int | None] | None = None,
    probes: int = CATALOGUE_PROBES,
) -> int:
    assert vocabulary.id is not None
    words = words_of_photos(vocabulary, features, probes)
    ids = [int(i) for i in image_ids]
    conn.execute(_DELETE_WORDS, {"vocabulary": vocabulary.id, "ids": ids})
    stored = list(
        conn.execute(
            _INSERT_PHOTOS,
            {
                "vocabulary": vocabulary.id,
                "extractor": vocabulary.extractor,
                "ids": ids,
                "counts": [len(w) for w in words],
                "versions": list(versions) if versions is not None else [None] * len(ids),
            },
        ).scalars()
    )
    if stored:
        flat_ids = np.repeat(np.asarray(ids, np.int64), [len(w) for w in words])
        flat_words = np.concatenate(words) if words else np.zeros(0, np.int32)
        conn.execute(
            _INSERT_POSTINGS,
            {"vocabulary": vocabulary.id, "ids": flat_ids.tolist(), "words": flat_words.tolist(), "stored": stored},
        )
    return len(stored)


def assign_and_store(
    conn: Connection,
    image_ids: Sequence[int],
    features: Sequence[LocalFeatures],
    vocabulary: Vocabulary | None = None,
) -> int:
    """Write the words of photos just ingested (their ``photo_features`` rows written, in ``conn``'s transaction
    or before) under the active vocabulary, replacing any they had. Photos without features of the vocabulary's
    extractor, or without keypoints, get none. Returns the number of photos written (0 without a vocabulary).
    """
    if len(image_ids) != len(features):
        raise ValueError("one LocalFeatures per image id")
    vocabulary = vocabulary or load_vocabulary(conn)
    if vocabulary is None or not len(image_ids):
        return 0
    try:
        with conn.begin_nested():
            return _store(conn, vocabulary, image_ids, features)
    except sa.exc.IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23503":
            raise
        # A build replaced the vocabulary meanwhile (its rows are gone): the photos get their words under the new
        # one from the build's own catch-up, after its switch. The ingestion's batch itself is not at stake.
        return 0


def catch_up(bind: Bind, vocabulary: Vocabulary | None = None, batch: int = BATCH) -> int:
    """Assign words to every photo that has features but no words under ``vocabulary`` (default: the active
    one), reading its features back from the database, ``batch`` photos per transaction. Returns how many."""
    vocabulary = vocabulary or load_vocabulary(bind)
    if vocabulary is None:
        return 0
    done, after = 0, 0
    while True:
        with transaction(bind) as conn:
            rows = conn.execute(
                _MISSING,
                {"extractor": vocabulary.extractor, "vocabulary": vocabulary.id, "after": after, "batch": batch},
            ).all()
            if not rows:
                return done
            features = [LocalFeatures.unpack(r.points, r.descriptors, r.width, r.height) for r in rows]
            done += _store(conn, vocabulary, [r.image_id for r in rows], features, [r.version for r in rows])
        after = rows[-1].image_id


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: the new vocabulary, the descriptors and photos it learnt from, the photos
    indexed, and the seconds spent learning and indexing."""

    vocabulary_id: int
    words: int
    descriptors: int
    sample_photos: int
    photos: int
    learn_s: float
    index_s: float


def _sample(bind: Bind, extractor: str, descriptors: int, seed: int, batch: int) -> tuple[np.ndarray, int]:
    """About ``descriptors`` SIFT descriptors: the same random share of each photo of a random sample of photos
    (all photos up to :data:`SAMPLE_SPREAD` times the descriptors needed), so that every kind of photo is
    represented; learning from whole photos of a subset (tried first) lost 4 points of R@1 on the covers, whose
    photos were not all in it."""
    with transaction(bind) as conn:
        rows = conn.execute(
            sa.text("SELECT image_id, octet_length(descriptors) / 128 FROM photo_features WHERE extractor = :e"),
            {"e": extractor},
        ).all()
    if not rows:
        return np.zeros((0, DESCRIPTOR_BYTES), np.uint8), 0
    ids = np.array([r[0] for r in rows], np.int64)
    counts = np.array([r[1] for r in rows], np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    # Photos read: enough to hold SAMPLE_SPREAD times the descriptors wanted, each giving its share.
    enough = np.searchsorted(np.cumsum(counts[order]), SAMPLE_SPREAD * descriptors) + 1
    chosen = ids[order[:enough]]
    share = min(1.0, descriptors / max(1, int(counts[order[:enough]].sum())))
    parts: list[np.ndarray] = []
    for start in range(0, len(chosen), batch):
        with transaction(bind) as conn:
            blobs = (
                conn.execute(
                    sa.text("SELECT descriptors FROM photo_features WHERE image_id = ANY(CAST(:ids AS bigint[]))"),
                    {"ids": chosen[start : start + batch].tolist()},
                )
                .scalars()
                .all()
            )
        for blob in blobs:
            d = np.frombuffer(blob, np.uint8).reshape(-1, DESCRIPTOR_BYTES)
            keep = rng.random(len(d)) < share
            parts.append(d[keep])
    sample = np.concatenate(parts) if parts else np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
    return sample, len(chosen)


#: The advisory lock one build at a time holds (two would learn twice and delete each other's vocabulary).
_BUILD_LOCK = 0x696D6773_776F7264  # "imgs" "word"


def build(
    bind: Engine,
    *,
    coarse: int = COARSE,
    fine: int = FINE,
    descriptors: int = SAMPLE_DESCRIPTORS,
    extractor: str = EXTRACTOR,
    seed: int = 0,
    batch: int = BATCH,
) -> BuildResult | None:
    """Learn a vocabulary from the stored features (a sample of about ``descriptors`` descriptors), index every
    photo's words under it (``batch`` photos per transaction, while the previous vocabulary still answers), then
    make it the active one and drop the previous ones. None when no photo has features of ``extractor``.

    Photos ingested while it runs get words under the previous vocabulary; the catch-up right before and after
    the switch gives them words under the new one (a photo whose ingestion commits in between is picked up by
    the next :func:`catch_up` or ingestion).
    """
    with bind.connect() as lock:
        lock.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _BUILD_LOCK})
        try:
            return _build(bind, coarse, fine, descriptors, extractor, seed, batch)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _BUILD_LOCK})
            lock.commit()


def _build(
    bind: Engine, coarse: int, fine: int, descriptors: int, extractor: str, seed: int, batch: int
) -> BuildResult | None:
    started = time.monotonic()
    sample, sample_photos = _sample(bind, extractor, descriptors, seed, batch)
    if not len(sample):
        return None
    learnt = learn(sample, coarse, fine, seed=seed, extractor=extractor)
    coarse_bytes, fine_bytes = learnt.pack()
    with transaction(bind) as conn:
        vocabulary_id = conn.execute(
            _INSERT_VOCABULARY,
            {
                "extractor": extractor,
                "coarse_cells": learnt.coarse.shape[0],
                "fine_words": learnt.fine.shape[1],
                "descriptors": len(sample),
                "coarse": coarse_bytes,
                "fine": fine_bytes,
            },
        ).scalar_one()
    # What searches will use: the centroids as stored (half precision).
    vocabulary = Vocabulary.unpack(
        coarse_bytes, fine_bytes, learnt.coarse.shape[0], learnt.fine.shape[1], extractor, vocabulary_id
    )
    learnt_at = time.monotonic()
    catch_up(bind, vocabulary, batch)
    with transaction(bind) as conn:
        # Row locks on the vocabularies: a concurrent build waits for this one to finish.
        conn.execute(
            sa.text("SELECT id FROM visual_vocabularies WHERE extractor = :e ORDER BY id FOR UPDATE"), {"e": extractor}
        )
        catch_up(conn, vocabulary, batch)
        conn.execute(
            sa.text("UPDATE visual_vocabularies SET active = false WHERE active AND extractor = :e"), {"e": extractor}
        )
        photos = conn.execute(
            sa.text(
                "UPDATE visual_vocabularies SET active = true, "
                "photos = (SELECT count(*) FROM visual_word_photos WHERE vocabulary_id = :id) "
                "WHERE id = :id RETURNING photos"
            ),
            {"id": vocabulary_id},
        ).scalar_one()
        # Each word's photos as of now, beside the photo count above: searches read the rarest words first.
        conn.execute(_COUNT_WORDS, {"id": vocabulary_id})
        conn.execute(
            sa.text("DELETE FROM visual_vocabularies WHERE extractor = :e AND id <> :id"),
            {"e": extractor, "id": vocabulary_id},
        )
    catch_up(bind, vocabulary, batch)
    return BuildResult(
        vocabulary_id=int(vocabulary_id),
        words=vocabulary.size,
        descriptors=len(sample),
        sample_photos=sample_photos,
        photos=int(photos),
        learn_s=round(learnt_at - started, 2),
        index_s=round(time.monotonic() - learnt_at, 2),
    )


#: Photos with features from which a first vocabulary is learnt automatically (:func:`maintain`).
MIN_PHOTOS = 20
#: A vocabulary is learnt again when the photos with features have grown this many times since it was learnt.
REBUILD_GROWTH = 4


def maintain(bind: Engine, extractor: str = EXTRACTOR) -> BuildResult | None:
    """Learn a vocabulary when there is none yet (from :data:`MIN_PHOTOS` photos with features) or when the
    catalogue has grown :data:`REBUILD_GROWTH` times since the active one was learnt; else nothing. Ingestion
    calls it after its last batch, so a catalogue's vocabulary follows it without anyone running a command."""
    with bind.connect() as lock:
        # One build at a time; an ingestion that finds another running leaves it the work.
        if not lock.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _BUILD_LOCK}).scalar_one():
            lock.commit()
            return None
        try:
            with transaction(bind) as conn:
                photos = conn.execute(
                    sa.text("SELECT count(*) FROM photo_features WHERE extractor = :e"), {"e": extractor}
                ).scalar_one()
                learnt_from = conn.execute(
                    sa.text("SELECT photos FROM visual_vocabularies WHERE active AND extractor = :e"),
                    {"e": extractor},
                ).scalar()
            if photos < MIN_PHOTOS or (learnt_from is not None and photos < REBUILD_GROWTH * max(learnt_from, 1)):
                return None
            return _build(bind, COARSE, FINE, SAMPLE_DESCRIPTORS, extractor, 0, BATCH)
        finally:
            lock.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _BUILD_LOCK})
            lock.commit()


def word_candidates(
    bind: Bind,
    features: LocalFeatures,
    n: int,
    *,
    categories: Sequence[str] | None = None,
    in_stock_only: bool = True,
    max_price: Any = None,
    exclude_skus: Sequence[str] | None = None,
    extractor: str = EXTRACTOR,
    vector: np.ndarray | None = None,
) -> list[sa.Row]:
    """``imgsearch_word_candidates`` rows for a query photo's features (its words assigned here): the ``n``
    products sharing the most words with it, each with all its photos' features, by rank; with the query's
    global ``vector``, each product's distance to it. No rows without an active vocabulary. A vocabulary replaced
    meanwhile is loaded again and the words assigned again."""
    text_vector = None if vector is None else "[" + ",".join(f"{float(v):.8g}" for v in vector) + "]"
    for attempt in range(2):
        vocabulary = load_vocabulary(bind, extractor)
        if vocabulary is None:
            return []
        params = {
            "words": query_words(vocabulary, features),
            "n": n,
            "extractor": extractor,
            "categories": list(categories) if categories is not None else None,
            "in_stock_only": in_stock_only,
            "max_price": max_price,
            "exclude": list(exclude_skus) if exclude_skus is not None else None,
            "vocabulary": vocabulary.id,
            "query": text_vector,
        }
        try:
            return _candidates(bind, params)
        except DBAPIError as exc:
            error = translate_error(exc)
            if attempt or not isinstance(error, StaleVocabularyError):
                raise error from None
    raise AssertionError("unreachable")  # pragma: no cover


def _candidates(bind: Bind, params: dict[str, Any]) -> list[sa.Row]:
    # A connection already in a transaction runs it in a savepoint, so that the transaction survives the stale
    # vocabulary's refusal (the caller assigns the words again); the caller translates the error.
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return conn.execute(_CANDIDATES, params).all()
    if bind.in_transaction():
        with bind.begin_nested():
            return bind.execute(_CANDIDATES, params).all()
    with bind.begin():
        return bind.execute(_CANDIDATES, params).all()


__all__ = [
    "BATCH",
    "CATALOGUE_PROBES",
    "COARSE",
    "FINE",
    "QUERY_PROBES",
    "SAMPLE_DESCRIPTORS",
    "BuildResult",
    "Vocabulary",
    "assign_and_store",
    "build",
    "catch_up",
    "kmeans",
    "learn",
    "load_vocabulary",
    "maintain",
    "photo_words",
    "query_words",
    "word_candidates",
    "words_of",
    "words_of_photos",
]
