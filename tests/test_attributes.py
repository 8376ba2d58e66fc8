"""The shop's attributes: kept, changed and removed exactly as the feed says, shown in every answer, and filtered on
everywhere a search is made with the same guarantees as the other filters: exactly k whenever k products match,
the exact ranking's products (revision 0018)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import Result
from sqlalchemy.engine import Engine

from imgsearch import attributes, catalogue, db, query, schema
from imgsearch.catalogue import ProductRecord
from imgsearch.errors import InvalidProductError, InvalidQueryError, ManifestError
from imgsearch.sources import CatalogueEntry, Failure, read_manifest
from tests.test_service import Service

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalogue"
PHOTOS = sorted((SAMPLE / "shoes").glob("*.jpg"))[:4]
N = 3000
BRANDS = [f"brand-{i:02d}" for i in range(60)]
COLOURS = ["black", "white", "red", "blue", "green", "grey", "navy", "beige", "pink", "brown"]
SIZES = ["XS", "S", "M", "L", "XL"]


class Shop:
    """A synthetic catalogue with attributes spread over every category, kept in NumPy to check every search."""

    def __init__(self, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.skus = [f"A{i:05d}" for i in range(N)]
        self.category = rng.choice(["tops", "shoes", "bags"], size=N, p=[0.5, 0.3, 0.2])
        centres = rng.normal(size=(12, 512))
        self.vectors = (centres[rng.integers(12, size=N)] + 1.1 * rng.normal(size=(N, 512))).astype(np.float32)
        self.in_stock = rng.random(N) < 0.8
        self.price = np.round(rng.uniform(5, 200, N), 2)
        self.attributes: list[dict[str, object]] = []
        for i in range(N):
            item: dict[str, object] = {
                "brand": BRANDS[rng.integers(len(BRANDS))],  # 1.7% each, in every category
                "colour": COLOURS[rng.integers(len(COLOURS))],
                "gender": "women" if rng.random() < 0.5 else "men",
                "rating": round(float(rng.uniform(1, 5)), 1),
                "sizes": sorted(rng.choice(SIZES, size=int(rng.integers(1, 4)), replace=False).tolist()),
            }
            if rng.random() < 0.1:
                item["eco"] = True
            if i % 500 == 0:
                item["limited"] = "42"  # text that reads as a number: 6 products
            self.attributes.append(item)

    def records(self) -> list[ProductRecord]:
        return [
            ProductRecord(
                sku=self.skus[i],
                category=str(self.category[i]),
                price=Decimal(str(self.price[i])),
                in_stock=bool(self.in_stock[i]),
                image=f"img/{i}.jpg",
                embedding=self.vectors[i],
                attributes=self.attributes[i],
            )
            for i in range(N)
        ]

    def exact(self, q: np.ndarray, k: int, mask: np.ndarray) -> list[str]:
        unit = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        dist = np.where(mask, 1.0 - unit @ (q / np.linalg.norm(q)), np.inf)
        return [self.skus[i] for i in np.argsort(dist, kind="stable")[:k] if np.isfinite(dist[i])]

    def mask(self, test: Callable[[dict[str, object]], bool]) -> np.ndarray:
        return np.array([test(a) for a in self.attributes])


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop()


@pytest.fixture(scope="module")
def filled(make_database: Callable[..., str], migrated_template: str, shop: Shop) -> Iterator[Engine]:
    engine = db.create_engine(make_database(template=migrated_template))
    assert catalogue.upsert_products(engine, shop.records()).added == N
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE products"))
        conn.execute(sa.text("ANALYZE product_images"))
        conn.commit()
    yield engine
    engine.dispose()


# name: (filters, the products they pass), from 50% of the catalogue down to 6 products.
FILTERS: dict[str, tuple[dict[str, object], Callable[[dict[str, object]], bool]]] = {
    "half": ({"gender": "women"}, lambda a: a["gender"] == "women"),
    "tenth": ({"colour": "red"}, lambda a: a["colour"] == "red"),
    "any_of": ({"brand": ["brand-01", "brand-02"]}, lambda a: a["brand"] in ("brand-01", "brand-02")),
    "list_item": ({"sizes": "XL"}, lambda a: "XL" in a["sizes"]),  # type: ignore[operator]
    "range": ({"rating": {">=": 4.5, "<": 5}}, lambda a: 4.5 <= a["rating"] < 5),  # type: ignore[operator]
    "has": ({"eco": {"has": True}}, lambda a: "eco" in a),
    "has_not": ({"eco": {"has": False}, "gender": "men"}, lambda a: "eco" not in a and a["gender"] == "men"),
    "combined": (
        {"brand": "brand-07", "gender": "women", "rating": {">=": 2}},
        lambda a: a["brand"] == "brand-07" and a["gender"] == "women" and a["rating"] >= 2,  # type: ignore[operator]
    ),
    "text_as_number": ({"limited": 42}, lambda a: a.get("limited") == "42"),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_every_filter_gives_exactly_k_of_the_exact_rankings_products(filled: Engine, shop: Shop, name: str) -> None:
    filters, passes = FILTERS[name]
    mask = shop.mask(passes) & shop.in_stock
    recalls = []
    for seed in range(4):
        q = shop.vectors[seed * 101] + np.random.default_rng(seed).normal(size=512).astype(np.float32)
        want = shop.exact(q, 10, mask)
        exact = [r.sku for r in query.search(filled, q, 10, filters=filters, exact=True)]
        assert exact == want, name
        got = query.search(filled, q, 10, filters=filters)
        assert len(got) == min(10, int(mask.sum())), name
        assert all(passes(shop.attributes[shop.skus.index(r.sku)]) and r.in_stock for r in got)
        recalls.append(len({r.sku for r in got} & set(want)) / len(want))
    assert np.mean(recalls) >= 0.95, (name, recalls)


def test_attribute_filters_combine_with_categories_prices_and_every_search(filled: Engine, shop: Shop) -> None:
    q = shop.vectors[5]
    filters = {"colour": ["red", "blue"]}
    mask = shop.mask(lambda a: a["colour"] in ("red", "blue"))
    both = mask & shop.in_stock & (shop.category == "bags") & (shop.price <= 50)
    got = query.search(filled, q, 10, filters=filters, categories=["bags"], max_price=50, exact=True)
    assert [r.sku for r in got] == shop.exact(q, 10, both)
    # Several vectors, many searches, similar products, cheaper ones and pages: the same filter everywhere.
    several = query.search(filled, shop.vectors[[5, 6]], 10, filters=filters)
    assert len(several) == 10 and all(r.attributes["colour"] in ("red", "blue") for r in several)
    many = query.search_many(filled, shop.vectors[[5, 6, 7]], 10, filters=filters)
    assert [len(answer) for answer in many] == [10, 10, 10]
    assert [r.sku for r in many[0]] == [r.sku for r in query.search(filled, q, 10, filters=filters)]
    similar = query.similar_to_sku(filled, shop.skus[5], 10, filters=filters)
    assert len(similar) == 10 and shop.skus[5] not in {r.sku for r in similar}
    assert all(r.attributes["colour"] in ("red", "blue") for r in similar)
    cheaper = query.cheaper_alternatives(filled, shop.skus[5], 5, filters=filters)
    assert cheaper and all(r.price < shop.price[5] and r.attributes["colour"] in ("red", "blue") for r in cheaper)
    first = query.search(filled, q, 5, filters=filters)
    second = query.search(filled, q, 5, filters=filters, cursor=first[-1].cursor)
    assert [r.sku for r in first + second] == [r.sku for r in query.search(filled, q, 10, filters=filters)]
    # Every result shows the product's attributes as stored.
    assert first[0].attributes == shop.attributes[shop.skus.index(first[0].sku)]


def test_sql_callers_filter_with_the_same_json(filled: Engine, shop: Shop) -> None:
    q = shop.vectors[9]
    with filled.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.sku, p.attributes FROM imgsearch_similar(CAST(:q AS vector), 5, "
                "filters => CAST(:f AS jsonb)) s JOIN products p USING (sku)"
            ),
            {"q": str(q.tolist()), "f": json.dumps({"brand": "brand-03"})},
        ).all()
        assert len(rows) == 5 and all(a["brand"] == "brand-03" for _, a in rows)
        # What a filter says is data, never path syntax: a value with quotes and operators matches nothing.
        hostile = {"brand": 'x" || true || "y', 'brand" || true || "': "z"}
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM products WHERE attributes @@ imgsearch_attribute_filter(CAST(:f AS jsonb))"
                ),
                {"f": json.dumps(hostile)},
            ).scalar_one()
            == 0
        )
    with pytest.raises(InvalidQueryError, match="takes a number"):
        query.search(filled, q, 5, filters={"rating": {">=": "high"}})
    for bad, message in (
        ({"rating": {"~": 1}}, "unknown condition"),
        ({"brand": []}, "1 to 100 of them"),
        ({"brand": None}, "must be text, a number or true/false"),
        ({"brand": {"has": "yes"}}, "takes true or false"),
        ({"": "x"}, "1 to 64 characters"),
        ({"rating": float("nan")}, "filters must hold"),
        ([("brand", "x")], "must be a mapping"),
    ):
        with pytest.raises(InvalidQueryError, match=message):
            query.search(filled, q, 5, filters=bad)  # type: ignore[arg-type]


def test_python_records_set_replace_keep_clear_and_refuse(engine: Engine) -> None:
    vectors = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine,
        [
            ProductRecord(sku="a", category="c", embedding=vectors[0], attributes={"brand": "Acme", "sizes": ["S"]}),
            ProductRecord(sku="b", category="c", embedding=vectors[1]),
        ],
    )
    assert catalogue.get_product(engine, "a").attributes == {"brand": "Acme", "sizes": ["S"]}
    assert catalogue.get_product(engine, "b").attributes == {}
    # None keeps them; a mapping replaces them whole; {} clears them.
    catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", price=Decimal(5))])
    assert catalogue.get_product(engine, "a").attributes == {"brand": "Acme", "sizes": ["S"]}
    counts = catalogue.upsert_products(
        engine, [ProductRecord(sku="a", category="c", price=Decimal(5), attributes={"rating": Decimal("4.5")})]
    )
    assert counts.updated == 1 and catalogue.get_product(engine, "a").attributes == {"rating": 4.5}
    catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", price=Decimal(5), attributes={})])
    assert catalogue.get_product(engine, "a").attributes == {}
    for bad, message in (
        ({"x": float("inf")}, "finite number"),
        ({"x": 10**400}, "finite number"),
        ({"x": {"nested": 1}}, "text, a number, true/false or a list of text"),
        ({"x": [1, 2]}, "list of text"),
        ({"x" * 65: "y"}, "1 to 64 characters"),
        ({f"k{i}": i for i in range(101)}, "at most 100 attributes"),
        ({"x": "y" * 1001}, "longer than 1000"),
        ({"x": "a\x00b"}, "NUL"),
        (["brand"], "must be a mapping"),
    ):
        with pytest.raises(InvalidProductError, match=message):
            catalogue.upsert_products(engine, [ProductRecord(sku="a", category="c", attributes=bad)])  # type: ignore[arg-type]
    assert catalogue.get_product(engine, "a").attributes == {}


def _feed(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _stored(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT sku, attributes FROM products ORDER BY sku")).all())


def test_the_feed_sets_changes_and_removes_them_and_the_cli_filters_and_shows_them(
    run: Callable[..., Result], engine: Engine, tmp_path: Path
) -> None:
    rows = [
        {
            "sku": f"s{i}",
            "category": "shoes",
            "price": "10.00",
            "image": str(photo),
            "brand": ["Acme", "Zenith", "Acme", "Orbit"][i],
            "size": ["42", "38", "007", "40"][i],
            "colours": ["black|white", "red", "", "blue|black"][i],
            "rating": ["4.5", "3", "5", ""][i],
            "vegan": ["true", "false", "", "TRUE"][i],
            "cost": "3.20",  # the shop's own business: kept out with --ignore-column
        }
        for i, photo in enumerate(PHOTOS)
    ]
    run("ingest", "--quiet", "--ignore-column", "Cost", "--manifest", str(_feed(tmp_path / "a.csv", rows)))
    assert _stored(engine) == {
        "s0": {"brand": "Acme", "size": 42, "colours": ["black", "white"], "rating": 4.5, "vegan": True},
        "s1": {"brand": "Zenith", "size": 38, "colours": "red", "rating": 3, "vegan": False},
        "s2": {"brand": "Acme", "size": "007", "rating": 5},
        "s3": {"brand": "Orbit", "size": 40, "colours": ["blue", "black"], "vegan": True},
    }

    def skus(*args: str) -> set[str]:
        records = json.loads(run("similar", "s1", "-k", "10", "--format", "json", *args).stdout)
        return {r["sku"] for r in records}

    assert skus("--where", "brand=Acme") == {"s0", "s2"}
    assert skus("--where", "brand=Acme|Orbit", "--where", "colours=black") == {"s0", "s3"}
    assert skus("--where", "rating>=4", "--where", "rating<5") == {"s0"}
    assert skus("--where", "size=42") == {"s0"} and skus("--where", "size=007") == {"s2"}
    assert skus("--where", "vegan=true") == {"s0", "s3"} and skus("--where", "!vegan") == {"s2"}
    assert skus("--where", "rating") == {"s0", "s2"}
    # A range reads numbers, numeric text and lists of them: one item within every bound.
    assert skus("--where", "size>=40", "--where", "size<=42") == {"s0", "s3"}
    records = json.loads(run("similar", "s1", "-k", "1", "--where", "brand=Orbit", "--format", "json").stdout)
    assert records[0]["attributes"] == {"brand": "Orbit", "size": 40, "colours": ["blue", "black"], "vegan": True}
    header, first = run("similar", "s1", "-k", "1", "--where", "brand=Orbit", "--format", "csv").stdout.splitlines()
    assert header.endswith(",attributes") and '""brand"":""Orbit""' in first
    table = run("similar", "s1", "-k", "3", "--where", "brand=Acme").stdout
    assert table.splitlines()[0].endswith("attributes") and "size=007" in table
    cheaper = run("cheaper", "s1", "--where", "brand=Orbit", "--format", "json").stdout
    assert json.loads(cheaper) == []  # s3 costs the same: nothing strictly cheaper
    for bad in ("rating>=high", "=x", "brand=", "a=1|", "rating=>4", "brand==Acme"):
        refused = run("similar", "s1", "--where", bad, expect=2)
        assert "--where" in refused.output and "Traceback" not in refused.output
    twice = run("similar", "s1", "--where", "brand=Acme", "--where", "brand=Orbit", expect=2)
    assert "given twice" in twice.output
    many = run("similar", "s1", *[f"--where=k{i}=1" for i in range(33)], expect=None)
    assert many.exit_code != 0 and "at most 32" in many.output and "Traceback" not in many.output

    # The next feed changes a value, empties a cell (that attribute goes), drops a column (it goes everywhere).
    rows[0]["brand"] = "Zenith"
    rows[1]["colours"] = ""
    for row in rows:
        del row["vegan"]
    run("ingest", "--quiet", "--ignore-column", "cost", "--manifest", str(_feed(tmp_path / "b.csv", rows)))
    assert _stored(engine) == {
        "s0": {"brand": "Zenith", "size": 42, "colours": ["black", "white"], "rating": 4.5},
        "s1": {"brand": "Zenith", "size": 38, "rating": 3},
        "s2": {"brand": "Acme", "size": "007", "rating": 5},
        "s3": {"brand": "Orbit", "size": 40, "colours": ["blue", "black"]},
    }
    # A feed with no attribute columns says nothing about them: kept. A full sync prunes products, not attributes.
    plain = [{k: row[k] for k in ("sku", "category", "price", "image")} for row in rows[:3]]
    kept = run("ingest", "--quiet", "--prune", "--force", "--manifest", str(_feed(tmp_path / "c.csv", plain)))
    assert "removed 1" in kept.stdout or "pruned 1" in kept.stdout, kept.stdout
    assert _stored(engine) == {
        "s0": {"brand": "Zenith", "size": 42, "colours": ["black", "white"], "rating": 4.5},
        "s1": {"brand": "Zenith", "size": 38, "rating": 3},
        "s2": {"brand": "Acme", "size": "007", "rating": 5},
    }


def test_manifests_leave_out_columns_that_cannot_name_an_attribute(tmp_path: Path) -> None:
    long = "x" * 65
    rows = [{"sku": "a", "category": "c", "image": "a.jpg", long: "1", "": "trailing comma", "Brand": "A"}]
    warnings: list[str] = []
    (entry,) = read_manifest(_feed(tmp_path / "m.csv", rows), warn=warnings.append)
    assert entry.attributes == {"brand": "A"}  # type: ignore[union-attr]
    assert len(warnings) == 1 and "cannot name an attribute" in warnings[0]
    wide = {"sku": "a", "category": "c", "image": "a.jpg", **{f"c{i}": "1" for i in range(101)}}
    with pytest.raises(ManifestError, match="at most 100 attribute columns"):
        list(read_manifest(_feed(tmp_path / "w.csv", [wide])))
    rows = [{"sku": "a", "category": "c", "image": "a.jpg", "brand": "A"}, {"sku": "a", "category": "c"}]
    rows[1].update(image="b.jpg", brand="B")
    entries = list(read_manifest(_feed(tmp_path / "n.csv", rows)))
    # The row that disagrees fails; the product keeps its first row's attributes.
    assert [e.attributes for e in entries if isinstance(e, CatalogueEntry)] == [{"brand": "A"}]
    assert any("disagree: attributes" in e.reason for e in entries if isinstance(e, Failure))


def test_where_conditions_read_as_the_filters_they_say() -> None:
    assert attributes.parse_where(["brand=Acme|Zenith", "rating>=4", "rating<4.5", "eco", "!sale", "size=42"]) == {
        "brand": ["Acme", "Zenith"],
        "rating": {">=": 4, "<": 4.5},
        "eco": {"has": True},
        "sale": {"has": False},
        "size": "42",
    }
    assert attributes.parse_where([]) is None
    assert attributes.parse_cell(" 4.50 ", "x") == 4.5 and attributes.parse_cell("0", "x") == 0
    assert attributes.parse_cell("-3", "x") == -3 and attributes.parse_cell("1e3", "x") == "1e3"
    assert attributes.parse_cell("a| b |", "x") == ["a", "b"] and attributes.parse_cell(" ", "x") is None


def test_http_where_as_an_object_or_as_conditions(
    filled: Engine, shop: Shop, make_database: Callable[..., str], fake_weights: str
) -> None:
    url = filled.url.render_as_string(hide_password=False)
    service = Service(url, fake_weights)
    try:
        vector = {"vector": shop.vectors[11].tolist(), "k": 6}
        body = service.client.post("/v1/search", json={**vector, "where": {"brand": ["brand-04", "brand-05"]}})
        assert body.status_code == 200, body.text
        results = body.json()
        assert len(results) == 6 and all(r["attributes"]["brand"] in ("brand-04", "brand-05") for r in results)
        same = service.client.post("/v1/search", json={**vector, "where": ["brand=brand-04|brand-05"]}).json()
        assert [r["sku"] for r in same] == [r["sku"] for r in results]
        sku = results[0]["sku"]
        similar = service.client.get(
            f"/v1/products/{sku}/similar", params={"where": ["gender=men", "rating>=3"], "k": 5}
        )
        assert similar.status_code == 200, similar.text
        assert all(r["attributes"]["gender"] == "men" and r["attributes"]["rating"] >= 3 for r in similar.json())
        for bad in ({"rating": {">=": "x"}}, ["rating>=x"], 7, {f"k{i}": 1 for i in range(33)}, {"a": "\u0000"}):
            refused = service.client.post("/v1/search", json={**vector, "where": bad})
            assert refused.status_code in (400, 422) and "error" in refused.json(), refused.text
    finally:
        service.close()


def test_0018_adds_them_to_a_populated_catalogue_and_takes_them_back(make_database: Callable[..., str]) -> None:
    engine = db.create_engine(make_database())
    schema.upgrade(engine, "0017")
    vectors = np.random.default_rng(1).normal(size=(30, 512)).astype(np.float32)
    catalogue.upsert_products(
        engine, [ProductRecord(sku=f"p{i}", category="c", price=Decimal(i), embedding=v) for i, v in enumerate(vectors)]
    )

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            statement = "SELECT p.sku, p.category, p.price, i.embedding::text FROM products p JOIN product_images i "
            return [tuple(r) for r in conn.execute(sa.text(statement + "ON i.product_id = p.id ORDER BY p.sku"))]

    before = rows()
    found = [r.sku for r in query.search(engine, vectors[3], 5)]
    schema.upgrade(engine)
    assert rows() == before and set(map(json.dumps, _stored(engine).values())) == {"{}"}
    assert [r.sku for r in query.search(engine, vectors[3], 5)] == found
    catalogue.upsert_products(engine, [ProductRecord(sku="p3", category="c", price=Decimal(3), attributes={"a": 1})])
    assert [r.sku for r in query.search(engine, vectors[3], 5, filters={"a": 1})] == ["p3"]
    schema.downgrade(engine, "0017")
    assert rows() == before
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("products", schema="imgsearch")}
        # The previous functions are back: seven arguments, no filters.
        conn.execute(
            sa.text("SELECT * FROM imgsearch_similar(CAST(:q AS vector), 3, NULL, true, NULL, NULL, NULL)"),
            {"q": str(vectors[0].tolist())},
        ).all()
    assert "attributes" not in columns
    assert [r.sku for r in query.search(engine, vectors[3], 5)] == found
    with pytest.raises(Exception, match="db upgrade"):
        query.search(engine, vectors[3], 5, filters={"a": 1})
    engine.dispose()


def test_0023_keeps_every_row_and_every_answer_both_ways(
    make_database: Callable[..., str], migrated_template: str, shop: Shop
) -> None:
    # Revision 0023 changes how filtered searches are planned, not what they find.
    engine = db.create_engine(make_database(template=migrated_template))
    catalogue.upsert_products(engine, shop.records()[:800])
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE products"))

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            statement = "SELECT p.sku, p.attributes::text, i.embedding::text FROM products p JOIN product_images i "
            return [tuple(r) for r in conn.execute(sa.text(statement + "ON i.product_id = p.id ORDER BY p.sku"))]

    def answers() -> list[list[tuple[str, float]]]:
        found = []
        for seed, name in enumerate(("any_of", "range", "combined", "half")):
            q = shop.vectors[seed * 7] + np.random.default_rng(seed).normal(size=512).astype(np.float32)
            for categories in (None, "tops"):
                results = query.search(engine, q, 10, filters=FILTERS[name][0], categories=categories)
                found.append([(r.sku, round(r.distance or 0, 6)) for r in results])
        found.append([(r.sku, round(r.distance or 0, 6)) for r in query.search(engine, shop.vectors[9], 10)])
        return found

    before, answered = rows(), answers()
    assert all(answered) and sum(len(a) == 10 for a in answered) >= 6
    schema.downgrade(engine, "0022")
    assert rows() == before and answers() == answered
    schema.upgrade(engine)
    assert rows() == before and answers() == answered
    engine.dispose()
