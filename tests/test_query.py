"""Filtered k-NN search against a real PostgreSQL + pgvector, checked against exact NumPy rankings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from imgsearch import catalogue, db, query
from imgsearch.catalogue import ProductRecord
from imgsearch.errors import InvalidQueryError, UnknownSkuError

N = 4000
# How far apart in cosine distance the half-precision index walk (revision 0008) may misjudge unit vectors:
# float16 keeps 11 significant bits, about 5e-4 of each component, and the errors average out over 512.
HALF_PRECISION_DISTANCE = 2e-5
CATEGORY_SHARES = {"big": 0.60, "mid": 0.30, "small": 0.097, "tiny": 0.003}  # tiny = 12 products


class Catalogue:
    """A synthetic catalogue kept in NumPy too, so every search can be checked against an exact ranking."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        # Clustered vectors, like image features: each category has a few centres.
        self.skus = [f"P{i:05d}" for i in range(N)]
        names = list(CATEGORY_SHARES)
        counts = [round(N * s) for s in CATEGORY_SHARES.values()]
        counts[0] += N - sum(counts)
        self.category = np.array([c for c, n in zip(names, counts, strict=True) for _ in range(n)])
        rng.shuffle(self.category)
        centres = {c: rng.normal(size=(4, 512)) for c in names}
        self.vectors = np.stack(
            [centres[c][rng.integers(4)] + 1.2 * rng.normal(size=512) for c in self.category]
        ).astype(np.float32)
        self.in_stock = rng.random(N) < 0.8
        self.price = np.round(rng.uniform(5, 200, N), 2)

    def records(self) -> list[ProductRecord]:
        return [
            ProductRecord(
                sku=self.skus[i],
                name=f"product {i}",
                category=str(self.category[i]),
                price=Decimal(str(self.price[i])),
                in_stock=bool(self.in_stock[i]),
                image=f"img/{i}.jpg",
                embedding=self.vectors[i],
            )
            for i in range(N)
        ]

    def exact(self, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[str]:
        unit = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        dist = 1.0 - unit @ (q / np.linalg.norm(q))
        if mask is not None:
            dist = np.where(mask, dist, np.inf)
        order = np.argsort(dist, kind="stable")[:k]
        return [self.skus[i] for i in order if np.isfinite(dist[i])]

    def query_vector(self, seed: int, category: str = "big") -> np.ndarray:
        rng = np.random.default_rng(1000 + seed)
        members = np.flatnonzero(self.category == category)
        return (self.vectors[rng.choice(members)] + 0.8 * rng.normal(size=512)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> Catalogue:
    return Catalogue()


@pytest.fixture(scope="module")
def filled(make_database: Callable[..., str], migrated_template: str, data: Catalogue) -> Iterator[Engine]:
    engine = db.create_engine(make_database(template=migrated_template))
    counts = catalogue.upsert_products(engine, data.records())
    assert counts.added == N
    with engine.connect() as conn:
        # Statistics as autovacuum would gather them: the plan is chosen from their estimates.
        conn.execute(sa.text("ANALYZE products"))
        conn.execute(sa.text("ANALYZE product_images"))
        conn.commit()
    yield engine
    engine.dispose()


@pytest.fixture
def index_only(filled: Engine) -> Iterator[Connection]:
    """A connection on which every filtered search takes the HNSW path (no exact shortcut for small filters)."""
    with filled.connect() as conn:
        conn.execute(sa.text("SET imgsearch.exact_search_below = 0"))
        yield conn
        conn.rollback()
        # A search that committed made the setting the session's: the pool must not hand it to other tests.
        conn.execute(sa.text("RESET imgsearch.exact_search_below"))
        conn.commit()


def recall(got: list[str], want: list[str]) -> float:
    return len(set(got) & set(want)) / len(want)


FILTERS = {
    "none": ({}, lambda d: np.ones(N, bool)),
    "in_stock": ({"in_stock_only": True}, lambda d: d.in_stock),
    "mid": ({"categories": ["mid"]}, lambda d: d.in_stock & (d.category == "mid")),
    "small": ({"categories": ["small"]}, lambda d: d.in_stock & (d.category == "small")),
    "tiny": ({"categories": "tiny", "in_stock_only": False}, lambda d: d.category == "tiny"),
    "price": ({"max_price": 40}, lambda d: d.in_stock & (d.price <= 40)),
}


def _kwargs(name: str) -> dict:
    kwargs = dict(FILTERS[name][0])
    kwargs.setdefault("in_stock_only", name != "none")
    return kwargs


@pytest.mark.parametrize("name", list(FILTERS))
def test_exact_search_equals_numpy_ranking(filled: Engine, data: Catalogue, name: str) -> None:
    for seed in range(5):
        q = data.query_vector(seed)
        got = query.search(filled, q, 10, exact=True, **_kwargs(name))
        want = data.exact(q, 10, FILTERS[name][1](data))
        assert [r.sku for r in got] == want
        distances = [r.distance for r in got]
        assert distances == sorted(distances)


@pytest.mark.parametrize("path", ["default", "index_only"])
@pytest.mark.parametrize("name", list(FILTERS))
def test_filtered_search_returns_k_with_high_recall(
    filled: Engine, index_only: Connection, data: Catalogue, name: str, path: str
) -> None:
    bind = filled if path == "default" else index_only
    recalls = []
    for seed in range(20):
        q = data.query_vector(seed, category="small" if seed % 2 else "big")
        mask = FILTERS[name][1](data)
        want = data.exact(q, 10, mask)
        got = query.search(bind, q, 10, **_kwargs(name))
        assert len(got) == min(10, int(mask.sum())), "a filtered search came back short"
        recalls.append(recall([r.sku for r in got], want))
    assert np.mean(recalls) >= 0.95


def test_filters_are_honoured(filled: Engine, data: Catalogue) -> None:
    q = data.query_vector(3)
    results = query.search(
        filled, q, 50, categories=["mid", "small"], max_price=Decimal("80"), exclude_skus=["P00001", "P00002"]
    )
    assert len(results) == 50
    for r in results:
        assert r.category in ("mid", "small") and r.in_stock and r.price is not None and r.price <= 80
        assert r.sku not in ("P00001", "P00002")
    with_sold_out = query.search(filled, q, 200, in_stock_only=False)
    assert any(not r.in_stock for r in with_sold_out)
    assert all(r.in_stock for r in query.search(filled, q, 200))
    # Results carry everything a shop page needs.
    first = results[0]
    assert first.name and first.image and isinstance(first.price, Decimal) and 0 <= first.distance <= 2


def test_fewer_matches_than_k_returns_all_matches(filled: Engine, data: Catalogue) -> None:
    tiny_in_stock = int(((data.category == "tiny") & data.in_stock).sum())
    got = query.search(filled, data.query_vector(0), 100, categories=["tiny"])
    assert len(got) == tiny_in_stock
    assert query.search(filled, data.query_vector(0), 10, categories=["no-such-category"]) == []


def test_sold_out_neighbourhood(make_database: Callable[..., str], migrated_template: str, data: Catalogue) -> None:
    """Everything that looks like the query is sold out: the search must still return k in-stock products."""
    engine = db.create_engine(make_database(template=migrated_template))
    rng = np.random.default_rng(3)
    q = data.query_vector(11)
    twins = [
        ProductRecord(sku=f"TWIN{i}", category="big", in_stock=False, embedding=q + 0.05 * rng.normal(size=512))
        for i in range(300)
    ]
    catalogue.upsert_products(engine, data.records() + twins)
    vectors = np.vstack([data.vectors, np.stack([t.embedding for t in twins])])
    skus = data.skus + [t.sku for t in twins]
    in_stock = np.concatenate([data.in_stock, np.zeros(300, bool)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dist = np.where(in_stock, 1 - unit @ (q / np.linalg.norm(q)), np.inf)
    want = [skus[i] for i in np.argsort(dist)[:10]]
    # Exact searches on the engine: the setting that forces one would last as long as conn's transaction.
    with engine.connect() as conn:
        conn.execute(sa.text("SET imgsearch.exact_search_below = 0"))
        # The twins lie 1e-5 apart in cosine distance, below the half-precision rounding of the index walk
        # (revision 0008): the walk may pick a different twin of the same distance, but never a farther one.
        walked = query.search(conn, q, 10, in_stock_only=False)[:5]
        exact = query.search(engine, q, 5, in_stock_only=False, exact=True)
        assert all(not r.in_stock and r.sku.startswith("TWIN") for r in walked)
        assert [w.distance for w in walked] == pytest.approx([e.distance for e in exact], abs=HALF_PRECISION_DISTANCE)
        got = query.search(conn, q, 10)
        assert len(got) == 10 and all(r.in_stock for r in got)
        assert recall([r.sku for r in got], want) >= 0.9
        # A scan budget smaller than the sold-out cluster forces the exact fallback: still k, still right.
        conn.execute(sa.text("SET imgsearch.max_scan_tuples = 50"))
        got = query.search(conn, q, 10)
        assert [r.sku for r in got] == want
    engine.dispose()


def test_a_distance_threshold_keeps_the_close_results_only(filled: Engine, data: Catalogue) -> None:
    q = data.query_vector(4)
    everything = query.search(filled, q, 20)
    limit = (everything[4].distance + everything[5].distance) / 2  # between the 5th and the 6th
    assert query.search(filled, q, 20, max_distance=limit) == everything[:5]
    assert query.search(filled, q, 20, max_distance=0) == []
    assert query.search(filled, q, 20, max_distance=2) == everything
    sku = everything[0].sku
    similar = query.similar_to_sku(filled, sku, 10)
    assert query.similar_to_sku(filled, sku, 10, max_distance=similar[2].distance) == similar[:3]
    many = query.search_many(filled, [q, data.query_vector(5)], 20, max_distance=limit)
    assert many[0] == everything[:5] and all(r.distance <= limit for r in many[1])
    for bad in (-0.1, 2.5, float("nan"), "0.3", True):
        with pytest.raises(InvalidQueryError, match="max_distance must be a number from 0 to 2"):
            query.search(filled, q, 5, max_distance=bad)


def test_sql_function_and_python_agree(filled: Engine, data: Catalogue) -> None:
    q = data.query_vector(5)
    url = make_url(filled.url.render_as_string(hide_password=False))
    python = query.search(filled, q, 10, categories=["mid"], max_price=100)
    vector_text = "[" + ",".join(repr(float(x)) for x in q) + "]"
    with psycopg.connect(host=url.query["host"], user=url.username, dbname=url.database) as conn:
        rows = conn.execute(
            # A backend with its own search_path calls the function by its qualified name.
            "SELECT sku, distance FROM imgsearch.imgsearch_similar(%s::vector, %s, %s, %s, %s)",
            (vector_text, 10, ["mid"], True, 100),
        ).fetchall()
    assert [r[0] for r in rows] == [r.sku for r in python]
    assert np.allclose([r[1] for r in rows], [r.distance for r in python], atol=1e-6)


def test_search_many_answers_each_vector_as_a_single_search_would(filled: Engine, data: Catalogue) -> None:
    queries = [data.query_vector(seed, category="small" if seed % 2 else "big") for seed in range(12)]
    filters = {"categories": ["mid", "big"], "max_price": Decimal("90")}
    many = query.search_many(filled, queries, 7, **filters)
    singles = [query.search(filled, q, 7, **filters) for q in queries]
    assert [[r.sku for r in a] for a in many] == [[r.sku for r in s] for s in singles]
    assert many[3][0].distance == pytest.approx(singles[3][0].distance, abs=1e-9)
    # The same through SQL: rows numbered by the vector's place, best first within each.
    url = make_url(filled.url.render_as_string(hide_password=False))
    vectors = "{" + ",".join('"[' + ",".join(repr(float(x)) for x in q) + ']"' for q in queries[:3]) + "}"
    with psycopg.connect(host=url.query["host"], user=url.username, dbname=url.database) as conn:
        rows = conn.execute(
            "SELECT query_index, sku FROM imgsearch.imgsearch_similar_many(%s::vector[], 7, %s, true, 90)",
            (vectors, ["mid", "big"]),
        ).fetchall()
    assert [sku for n, sku in rows if n == 2] == [r.sku for r in singles[1]]
    assert [n for n, _ in rows] == sorted(n for n, _ in rows)
    # Through a caller's own connection too (SQLAlchemy's path rather than psycopg's).
    with filled.connect() as conn:
        assert [r.sku for r in query.search_many(conn, queries[:2], 7, **filters)[1]] == [r.sku for r in singles[1]]


def test_search_many_refuses_bad_input(filled: Engine, data: Catalogue) -> None:
    q = data.query_vector(0)
    with pytest.raises(InvalidQueryError, match="1 to 1000 query vectors"):
        query.search_many(filled, [])
    with pytest.raises(InvalidQueryError, match="1 to 1000 query vectors"):
        query.search_many(filled, np.ones((1001, 512)))
    with pytest.raises(InvalidQueryError):
        query.search_many(filled, [q, q[:100]])
    with pytest.raises(InvalidQueryError, match="k must be"):
        query.search_many(filled, [q], 0)


def test_the_plan_follows_the_estimated_cost(filled: Engine, data: Catalogue) -> None:
    """Exact ranking where the estimate says the filter is rare, the walk where it is common, and the exact
    ranking's answers either way (docs/filtered-search.md)."""
    q = data.query_vector(7)

    def photo_index_scans(conn: Connection) -> int:
        # This session's own count, flushed or not: other sessions' searches do not move it.
        count = sa.text("SELECT pg_stat_get_xact_numscans('ix_product_images_embedding'::regclass)")
        return conn.execute(count).scalar_one()

    def search(conn: Connection, category: str, **settings: str) -> tuple[list[str], bool]:
        """The results, and whether this search walked the photo index."""
        for name, value in settings.items():
            conn.execute(sa.text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value})
        before = photo_index_scans(conn)
        got = [r.sku for r in query.search(conn, q, 10, categories=[category])]
        walked = photo_index_scans(conn) > before
        conn.rollback()
        return got, walked

    with filled.connect() as conn:
        for category, walked in (("tiny", False), ("big", True)):
            got, used_index = search(conn, category)
            assert used_index == walked, category
            want = [r.sku for r in query.search(filled, q, 10, categories=[category], exact=True)]
            assert recall(got, want) >= 0.9
        # A walk made to cost more than ranking every match: exact even for the big category.
        got, used_index = search(conn, "big", **{"imgsearch.walk_cost": "1000"})
        assert not used_index
        assert got == [r.sku for r in query.search(filled, q, 10, categories=["big"], exact=True)]


def test_similar_to_sku_excludes_itself(filled: Engine, data: Catalogue) -> None:
    sku = data.skus[42]
    results = query.similar_to_sku(filled, sku, 10, in_stock_only=False)
    assert len(results) == 10 and sku not in [r.sku for r in results]
    mask = np.ones(N, bool)
    mask[42] = False
    assert recall([r.sku for r in results], data.exact(data.vectors[42], 10, mask)) >= 0.9
    with pytest.raises(UnknownSkuError, match="NOPE"):
        query.similar_to_sku(filled, "NOPE")


def test_cheaper_alternatives(filled: Engine, data: Catalogue) -> None:
    i = int(np.argmax(np.where(data.category == "mid", data.price, -1)))  # the dearest "mid" product
    results = query.cheaper_alternatives(filled, data.skus[i], 10)
    assert len(results) == 10
    for r in results:
        assert r.in_stock and r.category == "mid" and r.price < Decimal(str(data.price[i]))
        assert r.sku != data.skus[i]
    cheapest = int(np.argmin(np.where(data.category == "mid", data.price, np.inf)))
    assert query.cheaper_alternatives(filled, data.skus[cheapest], 10) == []
    any_category = query.cheaper_alternatives(filled, data.skus[i], 30, same_category=False)
    assert {r.category for r in any_category} >= {"mid"}
    with pytest.raises(UnknownSkuError):
        query.cheaper_alternatives(filled, "NOPE")


# --- pages ----------------------------------------------------------------------------------------------------


def test_pages_by_offset_and_by_cursor_make_up_the_one_long_ranking(filled: Engine, data: Catalogue) -> None:
    q = data.query_vector(3)
    whole = query.search(filled, q, 60, exact=True, categories=["big", "mid"])
    assert [r.rank for r in whole] == list(range(1, 61)) and len({r.cursor for r in whole}) == 60
    by_offset = [
        r
        for start in (0, 20, 40)
        for r in query.search(filled, q, 20, exact=True, categories=["big", "mid"], offset=start)
    ]
    assert [(r.sku, r.rank) for r in by_offset] == [(r.sku, r.rank) for r in whole]
    by_cursor: list[query.SearchResult] = []
    for _ in range(3):
        after = by_cursor[-1].cursor if by_cursor else None
        by_cursor += query.search(filled, q, 20, exact=True, categories=["big", "mid"], cursor=after)
    assert [(r.sku, r.rank) for r in by_cursor] == [(r.sku, r.rank) for r in whole]
    # Through the index too: every page new, and together as good as one search for all of them.
    walked = query.search(filled, q, 20) + query.search(filled, q, 20, offset=20)
    assert len({r.sku for r in walked}) == 40
    assert recall([r.sku for r in walked], data.exact(q, 40, data.in_stock)) >= 0.9
    # search_many: the same page of every search.
    queries = [q, data.query_vector(4)]
    pages = query.search_many(filled, queries, 20, offset=20)
    for page, whole_many in zip(pages, query.search_many(filled, queries, 40), strict=True):
        assert [(r.sku, r.rank) for r in page] == [(r.sku, r.rank) for r in whole_many[20:]]
    # Offsets stop at the 1000th result; a cursor goes on (test_a_cursor_pages_past_the_1000th_result).
    tail = query.search(filled, q, 10, in_stock_only=False, offset=995)
    assert [r.rank for r in tail] == [996, 997, 998, 999, 1000]
    assert [r.rank for r in query.search(filled, q, 3, in_stock_only=False, cursor=tail[-1].cursor)] == [
        1001,
        1002,
        1003,
    ]


def test_similar_and_cheaper_page_too(filled: Engine, data: Catalogue) -> None:
    sku = data.skus[42]
    with filled.connect() as conn:
        # Ranked exactly, so that pages of one walk and of a longer one cannot differ (a walk asked for more can
        # find a product a shorter one missed: benchmarks/results/pages-50k.md).
        conn.execute(sa.text("SET imgsearch.exact_search = on"))
        whole = query.similar_to_sku(conn, sku, 12, in_stock_only=False, categories=["big"])
        first = query.similar_to_sku(conn, sku, 6, in_stock_only=False, categories=["big"])
        second = query.similar_to_sku(conn, sku, 6, in_stock_only=False, categories=["big"], cursor=first[-1].cursor)
    assert [r.sku for r in first + second] == [r.sku for r in whole]
    dearest = int(np.argmax(np.where(data.category == "mid", data.price, -1)))
    cheaper = query.cheaper_alternatives(filled, data.skus[dearest], 10)
    assert query.cheaper_alternatives(filled, data.skus[dearest], 5, offset=5) == cheaper[5:]


def test_a_cursor_continues_after_its_product_while_the_catalogue_changes(engine: Engine, data: Catalogue) -> None:
    records = data.records()[:300]
    catalogue.upsert_products(engine, records)
    q = data.vectors[7]
    first = query.search(engine, q, 10, exact=True, in_stock_only=False)
    second_before = query.search(engine, q, 10, exact=True, in_stock_only=False, offset=10)
    # New products nearer to the query than anything shown: an offset would show page 1's last ones again.
    rng = np.random.default_rng(0)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(sku=f"new-{i}", category="big", embedding=q + 0.01 * rng.normal(size=512).astype(np.float32))
            for i in range(4)
        ],
    )
    shifted = query.search(engine, q, 10, exact=True, in_stock_only=False, offset=10)
    assert {r.sku for r in shifted} & {r.sku for r in first}
    after = query.search(engine, q, 10, exact=True, in_stock_only=False, cursor=first[-1].cursor)
    assert [r.sku for r in after] == [r.sku for r in second_before]
    assert [r.rank for r in after] == list(range(11, 21))
    # The product a cursor names removed: the page still starts right after where it stood.
    catalogue.remove(engine, [first[-1].sku])
    assert [r.sku for r in query.search(engine, q, 10, exact=True, in_stock_only=False, cursor=first[-1].cursor)] == [
        r.sku for r in second_before
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"offset": -1}, "offset must"),
        ({"offset": 1000}, "offset must"),
        ({"offset": True}, "offset must"),
        ({"offset": "2"}, "offset must"),
        ({"cursor": "not a cursor"}, "cursor is not"),
        ({"cursor": ""}, "cursor is not"),
        ({"cursor": "WzAsMSwwLDAuNSwieCJd"}, "cursor is not"),  # [0,1,0,0.5,"x"]: no result has rank 0
        ({"cursor": "WyIxIiwxLDAsMC41LCJ4Il0"}, "cursor is not"),  # ["1",1,0,0.5,"x"]
        ({"cursor": "WzEsMSwwLE5hTiwieCJd"}, "cursor is not"),  # [1,1,0,NaN,"x"]
        ({"offset": 10, "cursor": "WzEsMSwwLDAuNSwieCJd"}, "offset or cursor"),
    ],
)
def test_bad_pages_raise(filled: Engine, extra: dict, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        query.search(filled, np.ones(512), 10, **extra)


@pytest.mark.parametrize(
    ("vector", "k", "extra", "message"),
    [
        (np.ones(511), 10, {}, "shape"),
        (np.ones((2, 511)), 10, {}, "shape"),
        (np.full(512, np.nan), 10, {}, "NaN"),
        (np.r_[np.ones(511), np.inf], 10, {}, "infinite"),
        (np.zeros(512), 10, {}, "zeros"),
        (["a"] * 512, 10, {}, "numbers"),
        (np.ones(512), 0, {}, "k must"),
        (np.ones(512), 1001, {}, "k must"),
        (np.ones(512), True, {}, "k must"),
        (np.ones(512), 2.5, {}, "k must"),
        (np.ones(512), 10, {"max_price": -1}, "non-negative"),
        (np.ones(512), 10, {"max_price": "abc"}, "number"),
        (np.ones(512), 10, {"max_price": float("nan")}, "non-negative"),
    ],
)
def test_bad_input_raises(filled: Engine, vector: object, k: object, extra: dict, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        query.search(filled, vector, k, **extra)  # type: ignore[arg-type]


def test_sql_function_validates_its_arguments(filled: Engine) -> None:
    cases = [
        ("CAST(:v3 AS vector), 10", "has 3 dimensions"),
        ("CAST(:v AS vector), 0", "k must be"),
        ("CAST(:v AS vector), 10, NULL, true, -5", "must be a number >= 0"),
        ("CAST(:v AS vector), 10, NULL, true, 'NaN'", "must be a number >= 0"),  # NaN would mean "no limit"
        ("CAST(:v AS vector), 10, NULL, true, NULL, NULL, 'NaN'", "must be a number >= 0"),
        ("CAST(:z AS vector), 10", "all zeros"),
    ]
    params = {"v3": "[1,2,3]", "v": "[" + ",".join(["1"] * 512) + "]", "z": "[" + ",".join(["0"] * 512) + "]"}
    for args, message in cases:
        with pytest.raises(sa.exc.DBAPIError, match=message), filled.connect() as conn:
            conn.execute(sa.text(f"SELECT * FROM imgsearch_similar({args})"), params)
    with pytest.raises(sa.exc.DBAPIError, match="unknown SKU"), filled.connect() as conn:
        conn.execute(sa.text("SELECT * FROM imgsearch_cheaper('x'' OR 1=1 --')"))


@pytest.mark.parametrize(
    "vector",
    [
        [1e38] * 512,  # its squared length overflows single precision
        [1e-45] + [0.0] * 511,  # a denormal: its squared length underflows to 0
        [3.4e38, -3.4e38] * 256,
    ],
)
def test_extreme_but_finite_vectors_give_real_distances(filled: Engine, vector: list[float]) -> None:
    # From SQL, as a backend passes them, and through Python: the same products at finite distances.
    text = "[" + ",".join(repr(x) for x in vector) + "]"
    with filled.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT sku, distance FROM imgsearch_similar(CAST(:v AS vector), 10)"), {"v": text}
        ).all()
    assert len(rows) == 10 and all(np.isfinite(d) and 0 <= d <= 2 for _, d in rows)
    python = query.search(filled, vector, 10)
    assert [r.sku for r in python] == [sku for sku, _ in rows]
    unit = np.asarray(vector, dtype=np.float64) / np.linalg.norm(np.asarray(vector, dtype=np.float64) / 1e38) / 1e38
    assert [r.sku for r in query.search(filled, unit, 10)] == [sku for sku, _ in rows]


def test_values_are_bound_not_formatted(filled: Engine, data: Catalogue) -> None:
    hostile = "mid') OR true --"
    assert query.search(filled, data.query_vector(1), 10, categories=[hostile]) == []
    with filled.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one() == N


def test_a_cursor_pages_past_the_1000th_result(filled: Engine, data: Catalogue) -> None:
    """Past the 1000th result a cursor goes on (revision 0020): the products after it, ranked exactly."""
    q = data.query_vector(11)
    with filled.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT p.sku, min(i.embedding <=> l2_normalize(CAST(:q AS vector))) FROM products p "
                "JOIN product_images i ON i.product_id = p.id GROUP BY p.sku"
            ),
            {"q": str(q.tolist())},
        ).all()
    everything = sorted((round(float(d), 9), sku) for sku, d in rows)
    first = query.search(filled, q, 1000, in_stock_only=False)
    deep = query.search(filled, q, 50, in_stock_only=False, cursor=first[-1].cursor)
    after_key = (round(first[-1].distance, 9), first[-1].sku)
    assert [r.rank for r in deep] == list(range(1001, 1051))
    assert [r.sku for r in deep] == [sku for d, sku in everything if (d, sku) > after_key][:50]
    deeper = query.search(filled, q, 50, in_stock_only=False, cursor=deep[-1].cursor)
    assert [r.rank for r in deeper] == list(range(1051, 1101))
    assert not {r.sku for r in deeper} & {r.sku for r in deep + first}
    # A page that starts before the 1000th and ends after it, with filters; and by a catalogue product.
    filtered = query.search(filled, q, 995, categories=["big", "mid"])
    across = query.search(filled, q, 10, categories=["big", "mid"], cursor=filtered[-1].cursor)
    assert [r.rank for r in across] == list(range(996, 1006))
    assert all(r.in_stock and r.category in ("big", "mid") for r in across)
    assert not {r.sku for r in across} & {r.sku for r in filtered}
    similar = query.similar_to_sku(filled, data.skus[7], 1000, in_stock_only=False)
    beyond = query.similar_to_sku(filled, data.skus[7], 5, in_stock_only=False, cursor=similar[-1].cursor)
    assert len(beyond) == 5 and data.skus[7] not in {r.sku for r in beyond}
    assert not {r.sku for r in beyond} & {r.sku for r in similar}
