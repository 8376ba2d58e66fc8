"""Visual words (imgsearch.visual_words): the vocabulary learnt from stored features, the inverted index in
PostgreSQL, and imgsearch_word_candidates, on a real server with real SIFT features of drawn images."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from imgsearch import catalogue, local_features, schema, visual_words
from imgsearch.catalogue import ImageRecord, ProductRecord
from imgsearch.errors import InvalidQueryError
from imgsearch.local_features import LocalFeatures

cv2 = pytest.importorskip("cv2")

PRODUCTS = 24
# A vocabulary for a few dozen photos (about 9k descriptors): about four descriptors a word, as in the benchmark.
SMALL = {"coarse": 16, "fine": 128}


def _picture(seed: int, size: tuple[int, int] = (480, 360)) -> np.ndarray:
    """A textured RGB picture, different for every seed: shapes and text, like a printed cover."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(40):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 120)), y + int(rng.integers(10, 120))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(5, 60)), colour, int(rng.integers(-1, 6)))
        else:
            text = "".join(rng.choice(list("ABCDEFGHKMNPRSTWXYZ0123456789"), 5))
            cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.6, 2.0)), colour, 2)
    return img


def _warped(img: np.ndarray, seed: int) -> np.ndarray:
    """A phone-photo-like copy: perspective, a crop, darker, noise."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = src + rng.uniform(-0.08, 0.08, (4, 2)).astype(np.float32) * np.float32([w, h])
    warped = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=(90, 90, 90))
    cropped = warped[int(0.05 * h) : int(0.92 * h), int(0.08 * w) : int(0.95 * w)]
    noisy = cropped.astype(np.float32) * 0.8 + rng.normal(0, 6, cropped.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(10_000 + seed).normal(size=512).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return [_picture(i) for i in range(PRODUCTS + 1)]


@pytest.fixture(scope="module")
def features(pictures: list[np.ndarray]) -> list[LocalFeatures]:
    return [local_features.extract(p) for p in pictures]


def _record(i: int, feats: LocalFeatures, **fields: object) -> ProductRecord:
    photos = [ImageRecord(f"/photos/p{i}.jpg", _unit(i), features=feats)]
    if i % 6 == 5:  # some products have a second photo, with no features of its own
        photos.append(ImageRecord(f"/photos/p{i}-b.jpg", _unit(1000 + i), position=1))
    base = {"category": "covers" if i % 2 else "boxes", "price": Decimal(10 + i), "name": f"product {i}"}
    return ProductRecord(sku=f"P{i:02d}", images=tuple(photos), **{**base, **fields})  # type: ignore[arg-type]


@pytest.fixture
def catalogue_engine(engine: Engine, features: list[LocalFeatures]) -> Engine:
    """A catalogue of PRODUCTS products with features, words indexed under a small vocabulary."""
    catalogue.upsert_products(engine, [_record(i, features[i]) for i in range(PRODUCTS)])
    result = visual_words.build(engine, **SMALL)
    assert result is not None
    return engine


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _skus(rows: list[sa.Row]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r.sku not in seen:
            seen.append(r.sku)
    return seen


def test_vocabulary_assigns_each_centroid_its_own_word() -> None:
    rng = np.random.default_rng(0)
    descriptors = rng.integers(0, 256, (3000, 128)).astype(np.uint8)
    vocabulary = visual_words.learn(descriptors, coarse=4, fine=8)
    assert vocabulary.size == 32
    words = vocabulary.assign(descriptors, probes=2)
    assert words.dtype == np.int32 and words.min() >= 0 and words.max() < 32
    # A word is the nearest fine centroid among the probed cells: never farther than the one found with one probe.
    x = visual_words.root_sift(descriptors)
    flat = vocabulary.fine.reshape(-1, 128)
    one = vocabulary.assign(descriptors, probes=1)
    assert np.all(np.linalg.norm(x - flat[words], axis=1) <= np.linalg.norm(x - flat[one], axis=1) + 1e-5)
    exact = np.linalg.norm(x[:, None] - flat[None], axis=2).argmin(axis=1)
    assert np.mean(vocabulary.assign(descriptors, probes=4) == exact) > 0.99
    coarse, fine = vocabulary.pack()
    again = visual_words.Vocabulary.unpack(coarse, fine, 4, 8, vocabulary.extractor)
    assert np.mean(again.assign(descriptors, probes=2) == words) > 0.98  # half precision moves almost nothing


def test_a_batch_of_photos_gets_the_words_each_photo_gets_alone(features: list[LocalFeatures]) -> None:
    # Ingestion assigns a batch's descriptors together (words_of_photos); a photo's words must not depend on the
    # batch it came in, nor a photo without features on its neighbours.
    vocabulary = visual_words.learn(np.concatenate([f.descriptors for f in features[:20]]), coarse=8, fine=16)
    empty = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), 10, 10)
    batch = [*features[:12], empty, *features[12:20]]
    together = visual_words.words_of_photos(vocabulary, batch, probes=2)
    alone = [visual_words.words_of(vocabulary, f, probes=2) for f in batch]
    assert len(together) == len(batch) and len(together[12]) == 0
    assert all(t.dtype == np.int32 and np.array_equal(t, a) for t, a in zip(together, alone, strict=True))
    assert visual_words.words_of_photos(vocabulary, []) == []


def test_build_learns_a_vocabulary_and_indexes_every_photo_with_features(
    catalogue_engine: Engine, features: list[LocalFeatures]
) -> None:
    vocabulary = visual_words.load_vocabulary(catalogue_engine)
    assert vocabulary is not None and vocabulary.size == 16 * 128
    assert visual_words.load_vocabulary(catalogue_engine) is vocabulary  # cached
    assert _count(catalogue_engine, "visual_word_photos") == PRODUCTS
    words = sum(len(visual_words.words_of(vocabulary, f)) for f in features[:PRODUCTS])
    assert _count(catalogue_engine, "visual_word_postings") == words
    with catalogue_engine.connect() as conn:
        active = conn.execute(sa.text("SELECT id, photos FROM visual_vocabularies WHERE active")).one()
    assert active.id == vocabulary.id and active.photos == PRODUCTS


def test_a_photos_own_features_find_it_first(catalogue_engine: Engine, features: list[LocalFeatures]) -> None:
    for i in range(0, PRODUCTS, 3):
        rows = visual_words.word_candidates(catalogue_engine, features[i], 5, in_stock_only=False)
        assert rows[0].sku == f"P{i:02d}" and rows[0].rank == 1
        assert rows[0].distance is None


def test_a_warped_cropped_photo_finds_the_original_in_the_top_few(
    catalogue_engine: Engine, pictures: list[np.ndarray]
) -> None:
    ranks = []
    for i in range(0, PRODUCTS, 2):
        query = local_features.extract(_warped(pictures[i], seed=i), local_features.QUERY_KEYPOINTS)
        skus = _skus(visual_words.word_candidates(catalogue_engine, query, 10))
        ranks.append(skus.index(f"P{i:02d}") if f"P{i:02d}" in skus else 99)
    assert max(ranks) < 3, ranks
    assert np.mean(np.array(ranks) == 0) >= 0.8, ranks
    # And the rows carry what verification needs: the photo's features, which verify the query.
    query = local_features.extract(_warped(pictures[0], seed=0), local_features.QUERY_KEYPOINTS)
    first = visual_words.word_candidates(catalogue_engine, query, 3)[0]
    stored = LocalFeatures.unpack(first.points, first.descriptors, first.width, first.height)
    assert local_features.verify(query, [stored])[0].exact


def test_every_photo_of_a_candidate_comes_with_its_features(
    catalogue_engine: Engine, features: list[LocalFeatures]
) -> None:
    rows = visual_words.word_candidates(catalogue_engine, features[5], 3)
    mine = [r for r in rows if r.sku == "P05"]
    assert [r.photo for r in mine] == ["/photos/p5.jpg", "/photos/p5-b.jpg"]
    assert mine[0].descriptors is not None and mine[1].descriptors is None
    assert mine[0].image == "/photos/p5.jpg"  # the photo that shares the words
    assert [r.rank for r in rows] == sorted(r.rank for r in rows)


def test_filters_hold(catalogue_engine: Engine, features: list[LocalFeatures]) -> None:
    catalogue.upsert_products(catalogue_engine, [_record(3, features[3], in_stock=False)])
    query = features[3]
    assert "P03" not in _skus(visual_words.word_candidates(catalogue_engine, query, 30))
    everything = _skus(visual_words.word_candidates(catalogue_engine, query, 30, in_stock_only=False))
    assert everything[0] == "P03" and len(everything) == PRODUCTS
    boxes = _skus(visual_words.word_candidates(catalogue_engine, query, 30, categories=["boxes"], in_stock_only=False))
    assert boxes and all(int(s[1:]) % 2 == 0 for s in boxes)
    cheap = _skus(visual_words.word_candidates(catalogue_engine, query, 30, max_price=Decimal(15), in_stock_only=False))
    assert sorted(cheap) == [f"P{i:02d}" for i in range(6)]
    excluded = _skus(visual_words.word_candidates(catalogue_engine, query, 30, exclude_skus=["P03", "P04"]))
    assert "P03" not in excluded and "P04" not in excluded and len(excluded) == PRODUCTS - 2
    assert len(_skus(visual_words.word_candidates(catalogue_engine, query, 2, in_stock_only=False))) == 2


def test_bad_arguments_are_refused(catalogue_engine: Engine, features: list[LocalFeatures]) -> None:
    with pytest.raises(InvalidQueryError, match="n must be between"):
        visual_words.word_candidates(catalogue_engine, features[0], 0)
    with pytest.raises(InvalidQueryError, match="price limit"):
        visual_words.word_candidates(catalogue_engine, features[0], 5, max_price=Decimal(-1))
    with catalogue_engine.connect() as conn:
        none = conn.execute(
            sa.text("SELECT * FROM imgsearch_word_candidates(NULL, 5, :e)"), {"e": local_features.EXTRACTOR}
        ).all()
        other = conn.execute(sa.text("SELECT * FROM imgsearch_word_candidates(ARRAY[1, 2], 5, 'other')")).all()
    assert none == [] and other == []


def test_no_vocabulary_means_no_candidates(engine: Engine, features: list[LocalFeatures]) -> None:
    catalogue.upsert_products(engine, [_record(0, features[0])])
    assert visual_words.load_vocabulary(engine) is None
    assert visual_words.word_candidates(engine, features[0], 5) == []
    with engine.begin() as conn:
        assert visual_words.assign_and_store(conn, [1], [features[0]]) == 0
    assert visual_words.catch_up(engine) == 0


def test_removed_photos_take_their_words_along(catalogue_engine: Engine, features: list[LocalFeatures]) -> None:
    before = _count(catalogue_engine, "visual_word_postings")
    with catalogue_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM products WHERE sku IN ('P00', 'P01')"))
    assert _count(catalogue_engine, "visual_word_photos") == PRODUCTS - 2
    assert 0 < _count(catalogue_engine, "visual_word_postings") < before
    assert "P00" not in _skus(visual_words.word_candidates(catalogue_engine, features[0], 5))
    with catalogue_engine.connect() as conn:
        first = conn.execute(sa.text("SELECT min(image_id) FROM photo_features")).scalar_one()
    # A photo whose features change loses its words (the trigger), whoever rewrote them.
    with catalogue_engine.begin() as conn:
        conn.execute(sa.text("UPDATE photo_features SET extractor = 'other' WHERE image_id = :i"), {"i": first})
    assert _count(catalogue_engine, "visual_word_photos") == PRODUCTS - 3


def test_a_photo_ingested_later_gets_its_words(
    catalogue_engine: Engine, features: list[LocalFeatures], pictures: list[np.ndarray]
) -> None:
    new = PRODUCTS  # a product the vocabulary never saw
    catalogue.upsert_products(catalogue_engine, [_record(new, features[new])])
    with catalogue_engine.connect() as conn:
        image_id = conn.execute(
            sa.text("SELECT i.id FROM product_images i JOIN products p ON p.id = i.product_id WHERE p.sku = :s"),
            {"s": f"P{new}"},
        ).scalar_one()
    query = local_features.extract(_warped(pictures[new], seed=new), local_features.QUERY_KEYPOINTS)
    # Stored with its features, it got its words in the same transaction: searches find it at once.
    assert _skus(visual_words.word_candidates(catalogue_engine, query, 5))[0] == f"P{new}"
    with catalogue_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM visual_word_photos WHERE image_id = :i"), {"i": image_id})
    assert f"P{new}" not in _skus(visual_words.word_candidates(catalogue_engine, query, 30))
    with catalogue_engine.begin() as conn:
        assert visual_words.assign_and_store(conn, [image_id], [features[new]]) == 1
        assert visual_words.assign_and_store(conn, [image_id], [features[new]]) == 1  # replaces, no duplicate
    assert _skus(visual_words.word_candidates(catalogue_engine, query, 5))[0] == f"P{new}"
    # A photo whose features were rewritten lost its words; catch_up reads them back and assigns them again.
    with catalogue_engine.begin() as conn:
        conn.execute(sa.text("UPDATE photo_features SET points = points, descriptors = descriptors || ''::bytea"))
        conn.execute(sa.text("DELETE FROM visual_word_photos WHERE image_id = :i"), {"i": image_id})
    assert visual_words.catch_up(catalogue_engine, batch=7) == 1
    assert visual_words.catch_up(catalogue_engine) == 0


def test_a_rebuild_replaces_the_vocabulary_and_searches_follow(
    catalogue_engine: Engine, features: list[LocalFeatures], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = visual_words.load_vocabulary(catalogue_engine)
    assert old is not None
    postings = _count(catalogue_engine, "visual_word_postings")
    result = visual_words.build(catalogue_engine, coarse=16, fine=64, seed=1)
    assert result is not None and result.vocabulary_id != old.id and result.photos == PRODUCTS and result.words == 1024
    assert _count(catalogue_engine, "visual_vocabularies") == 1
    assert _count(catalogue_engine, "visual_word_photos") == PRODUCTS
    assert _count(catalogue_engine, "visual_word_postings") < postings  # fewer words: fewer distinct ones per photo
    # Words assigned with the replaced vocabulary are refused (55000); the Python call reloads and assigns again.
    with pytest.raises(sa.exc.DBAPIError, match="no longer the active one"), catalogue_engine.connect() as conn:
        conn.execute(
            sa.text("SELECT * FROM imgsearch_word_candidates(ARRAY[1], 5, :e, vocabulary => :v)"),
            {"e": local_features.EXTRACTOR, "v": old.id},
        ).all()
    assert visual_words.word_candidates(catalogue_engine, features[7], 3)[0].sku == "P07"
    # A search that loaded the old vocabulary just before the switch: refused, reloaded, assigned again.
    real = visual_words.load_vocabulary
    calls: list[int] = []

    def stale_first(bind: object, extractor: str = local_features.EXTRACTOR) -> visual_words.Vocabulary | None:
        calls.append(1)
        return old if len(calls) == 1 else real(bind, extractor)  # type: ignore[arg-type]

    monkeypatch.setattr(visual_words, "load_vocabulary", stale_first)
    with catalogue_engine.connect() as conn, conn.begin():
        assert visual_words.word_candidates(conn, features[7], 3)[0].sku == "P07"
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1  # the transaction survived the refusal
    assert len(calls) == 2


def test_the_migration_down_and_up_keeps_the_catalogue(catalogue_engine: Engine) -> None:
    products = _count(catalogue_engine, "products")
    schema.downgrade(catalogue_engine, "0008")
    tables = set(sa.inspect(catalogue_engine).get_table_names())
    assert not tables & {"visual_vocabularies", "visual_word_photos", "visual_word_postings", "photo_features"}
    assert _count(catalogue_engine, "products") == products
    schema.upgrade(catalogue_engine)
    assert _count(catalogue_engine, "products") == products
    assert _count(catalogue_engine, "visual_vocabularies") == 0
    with catalogue_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regproc('imgsearch_word_candidates') IS NOT NULL")).scalar_one()


def _word_counts(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT word, count(*) FROM visual_word_postings p JOIN visual_vocabularies v "
                    "ON v.id = p.vocabulary_id AND v.active GROUP BY word"
                )
            ).all()
        )


def test_every_words_photos_are_counted_when_the_vocabulary_is_activated(catalogue_engine: Engine) -> None:
    with catalogue_engine.connect() as conn:
        counted = dict(
            conn.execute(
                sa.text(
                    "SELECT word, f.photos FROM visual_word_frequencies f JOIN visual_vocabularies v "
                    "ON v.id = f.vocabulary_id AND v.active"
                )
            ).all()
        )
    assert counted == _word_counts(catalogue_engine)
    # A rebuild counts again under the new vocabulary; the old counts go with the old vocabulary.
    visual_words.build(catalogue_engine, **SMALL, seed=1)
    assert _count(catalogue_engine, "visual_word_frequencies") == len(_word_counts(catalogue_engine))


def _read_words(engine: Engine, words: list[int], budget: str) -> list[str]:
    """The products imgsearch_word_candidates ranks under a postings budget (imgsearch.word_postings)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT set_config('imgsearch.word_postings', :b, false)"), {"b": budget})
        rows = conn.execute(
            sa.text("SELECT sku FROM imgsearch_word_candidates(CAST(:w AS integer[]), 30, :e, in_stock_only => false)"),
            {"w": words, "e": local_features.EXTRACTOR},
        ).all()
    return [r.sku for r in rows]


def test_a_postings_budget_reads_the_rarest_words_first(catalogue_engine: Engine) -> None:
    counts = _word_counts(catalogue_engine)
    common = max(counts, key=lambda w: (counts[w], w))
    rare = min((w for w in counts if counts[w] == 1), key=lambda w: w)
    with catalogue_engine.connect() as conn:
        (owner,) = conn.execute(
            sa.text(
                "SELECT DISTINCT p.sku FROM visual_word_postings w JOIN product_images i ON i.id = w.image_id "
                "JOIN products p ON p.id = i.product_id WHERE w.word = :w"
            ),
            {"w": rare},
        ).one()
    assert counts[common] > 2
    # Every posting read: every product with the common word, and the rare word's owner.
    everything = _read_words(catalogue_engine, [common, rare], "0")
    assert len(set(everything)) >= counts[common] and owner in everything
    # A budget of one posting reads the rare word only (the first word is always read): its owner alone.
    assert set(_read_words(catalogue_engine, [common, rare], "1")) == {owner}
    # No limit by default: the same answer as reading everything.
    assert _read_words(catalogue_engine, [common, rare], "") == everything
    # Words no photo had when counting are read first and cost nothing.
    assert set(_read_words(catalogue_engine, [common, rare, 10**6], "1")) == {owner}


def test_a_filter_the_best_scoring_photos_fail_still_gets_n_products(
    catalogue_engine: Engine, features: list[LocalFeatures]
) -> None:
    # 450 copies of P00's photo in a category of their own: the 400 best-scoring photos for P00's features are
    # all in it, and a search in another category has to look further.
    copies = [
        ProductRecord(
            sku=f"C{i:03d}",
            images=(ImageRecord(f"/photos/c{i}.jpg", _unit(5000 + i), features=features[0]),),
            category="copies",
            price=Decimal(1),
            name="copy",
        )
        for i in range(450)
    ]
    catalogue.upsert_products(catalogue_engine, copies)
    visual_words.catch_up(catalogue_engine)
    assert _count(catalogue_engine, "visual_word_photos") == PRODUCTS + 450
    first = _skus(visual_words.word_candidates(catalogue_engine, features[0], 400, in_stock_only=False))
    assert len(first) == 400 and {s[0] for s in first[1:]} == {"C"}
    covers = _skus(
        visual_words.word_candidates(catalogue_engine, features[0], 5, categories=["covers"], in_stock_only=False)
    )
    assert len(covers) == 5 and all(int(s[1:]) % 2 == 1 for s in covers)


def test_a_bad_postings_budget_is_refused(catalogue_engine: Engine) -> None:
    for bad in ("-1", "lots", "1e99"):
        with pytest.raises(sa.exc.DBAPIError, match=r"imgsearch\.word_postings must be a whole number"):
            _read_words(catalogue_engine, [1, 2], bad)


def test_0015_counts_the_words_of_a_built_catalogue_and_goes_back(catalogue_engine: Engine) -> None:
    postings = _count(catalogue_engine, "visual_word_postings")
    products = _count(catalogue_engine, "products")
    counts = _word_counts(catalogue_engine)
    schema.downgrade(catalogue_engine, "0014")
    assert "visual_word_frequencies" not in sa.inspect(catalogue_engine).get_table_names()
    assert _count(catalogue_engine, "visual_word_postings") == postings
    # The search of 0009 is back, and reads every posting.
    some = list(counts)[:50]
    assert _read_words(catalogue_engine, some, "1") == _read_words(catalogue_engine, some, "0")
    schema.upgrade(catalogue_engine)
    with catalogue_engine.connect() as conn:
        counted = dict(conn.execute(sa.text("SELECT word, photos FROM visual_word_frequencies")).all())
    assert counted == counts
    assert _count(catalogue_engine, "visual_word_postings") == postings
    assert _count(catalogue_engine, "products") == products


def test_ingestion_during_a_rebuild_loses_no_photo_and_one_build_runs_at_a_time(
    catalogue_engine: Engine, features: list[LocalFeatures]
) -> None:
    old = visual_words.load_vocabulary(catalogue_engine)
    assert old is not None
    assert visual_words.build(catalogue_engine) is not None  # the old vocabulary and its words are gone
    with catalogue_engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT image_id FROM photo_features ORDER BY image_id LIMIT 2")).scalars().all()
    # A writer still holding the replaced vocabulary: its words are dropped, its transaction and rows are not.
    with catalogue_engine.begin() as conn:
        assert visual_words.assign_and_store(conn, ids, features[:2], vocabulary=old) == 0
        conn.execute(sa.text("UPDATE products SET name = 'kept' WHERE sku = 'P00'"))
    with catalogue_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM products WHERE sku = 'P00'")).scalar_one() == "kept"
    # While one build holds the lock, an ingestion's maintenance leaves the work to it instead of racing it.
    with catalogue_engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": visual_words._BUILD_LOCK})
        with catalogue_engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM visual_vocabularies"))
        assert visual_words.maintain(catalogue_engine) is None
        holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": visual_words._BUILD_LOCK})
        holder.commit()
    assert visual_words.maintain(catalogue_engine) is not None  # free again: no vocabulary, so one is learnt
