"""The schema: Alembic migrations, agreement with the models, and constraints enforced by PostgreSQL itself."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from imgsearch import catalogue, db, schema
from imgsearch.errors import EmbeddingSpaceMismatchError, SchemaError
from imgsearch.tables import Base


def _vec(seed: int = 0) -> str:
    return "[" + ",".join(str(x) for x in np.random.default_rng(seed).random(512)) + "]"


def test_upgrade_downgrade_upgrade(make_database: Callable[..., str]) -> None:
    engine = db.create_engine(make_database())
    with pytest.raises(SchemaError, match="imgsearch db upgrade"):
        schema.require_schema(engine)
    schema.upgrade(engine)
    schema.upgrade(engine)  # a second upgrade is a no-op
    assert schema.current_revision(engine) == schema.head_revision()
    schema.require_schema(engine)

    schema.downgrade(engine, "base")
    assert schema.current_revision(engine) is None
    tables = sa.inspect(engine).get_table_names()
    assert "products" not in tables and "embedding_space" not in tables

    schema.upgrade(engine)
    assert {"products", "embedding_space"} <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        functions = set(conn.execute(sa.text("SELECT proname FROM pg_proc WHERE proname LIKE 'imgsearch_%'")).scalars())
    assert {"imgsearch_similar", "imgsearch_similar_to_sku", "imgsearch_cheaper"} <= functions
    engine.dispose()


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_indexes(engine: Engine) -> None:
    with engine.connect() as conn:
        indexdefs = dict(
            conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('products', 'product_images')")
            ).all()
        )
        storage = conn.execute(
            sa.text(
                "SELECT attstorage FROM pg_attribute "
                "WHERE attrelid = 'product_images'::regclass AND attname = 'embedding'"
            )
        ).scalar_one()
    assert "USING hnsw (((embedding)::halfvec(512)) halfvec_cosine_ops)" in indexdefs["ix_product_images_embedding"]
    assert "(category, price)" in indexdefs["ix_products_category_price"]
    # No index holds in_stock (stock syncs update products in place, HOT) and products holds no vector.
    assert not any("in_stock" in d for d in indexdefs.values())
    assert storage == "p"  # vectors stay in the heap row, not in TOAST


GOOD = {"sku": "A1", "name": "Shoe", "category": "shoes", "price": 10, "in_stock": True}
PHOTO = {"image": "/photos/a1.jpg", "sha": "a" * 64, "position": 0}
INSERT_PRODUCT = sa.text(
    "INSERT INTO products (sku, name, category, price, in_stock) VALUES (:sku, :name, :category, :price, :in_stock) "
    "RETURNING id"
)
INSERT_PHOTO = sa.text(
    "INSERT INTO product_images (product_id, image, image_sha256, position, embedding) "
    "VALUES (:id, :image, :sha, :position, CAST(:vec AS vector))"
)


@pytest.mark.parametrize(
    ("change", "constraint"),
    [
        ({"sku": ""}, "ck_products_sku"),
        ({"sku": "   "}, "ck_products_sku"),
        ({"sku": "x" * 256}, "ck_products_sku|too long"),
        ({"sku": None}, "null value"),
        ({"category": ""}, "ck_products_category"),
        ({"category": None}, "null value"),
        ({"price": -1}, "ck_products_price"),
        ({"in_stock": None}, "null value"),
        ({"sha": "not-a-hash"}, "ck_product_images_image_sha256"),
        ({"position": -1}, "ck_product_images_position"),
        ({"image": None}, "null value"),
        ({"vec": "[" + ",".join(["0"] * 512) + "]"}, "ck_product_images_embedding_nonzero"),
        ({"vec": "[1,2,3]"}, "expected 512 dimensions"),
        ({"vec": "[" + ",".join(["NaN"] * 512) + "]"}, "NaN not allowed"),
        ({"vec": None}, "null value"),
    ],
)
def test_database_rejects_bad_rows(engine: Engine, change: dict, constraint: str) -> None:
    row = {**GOOD, **PHOTO, "vec": _vec(), **change}
    with pytest.raises(sa.exc.DBAPIError, match=constraint), engine.begin() as conn:
        row["id"] = conn.execute(INSERT_PRODUCT, row).scalar_one()
        conn.execute(INSERT_PHOTO, row)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one() == 0


def test_duplicate_sku_and_photo_rejected(engine: Engine) -> None:
    with engine.begin() as conn:
        product = conn.execute(INSERT_PRODUCT, GOOD).scalar_one()
        conn.execute(INSERT_PHOTO, {**PHOTO, "id": product, "vec": _vec(1)})
    with pytest.raises(sa.exc.IntegrityError, match="products_sku_key"), engine.begin() as conn:
        conn.execute(INSERT_PRODUCT, GOOD)
    with pytest.raises(sa.exc.IntegrityError, match="uq_product_images_product_image"), engine.begin() as conn:
        conn.execute(INSERT_PHOTO, {**PHOTO, "id": product, "vec": _vec(2)})


def test_photos_follow_their_product(engine: Engine) -> None:
    with engine.begin() as conn:
        product = conn.execute(INSERT_PRODUCT, GOOD).scalar_one()
        for i in range(3):
            conn.execute(INSERT_PHOTO, {**PHOTO, "image": f"/p/{i}.jpg", "id": product, "vec": _vec(i)})
        # A photo carries its product's category (whatever it is inserted with), and follows a change of it.
        assert set(conn.execute(sa.text("SELECT category FROM product_images")).scalars()) == {"shoes"}
        conn.execute(sa.text("UPDATE products SET category = 'boots'"))
        assert set(conn.execute(sa.text("SELECT category FROM product_images")).scalars()) == {"boots"}
        conn.execute(sa.text("UPDATE product_images SET category = 'hats'"))
        assert set(conn.execute(sa.text("SELECT category FROM product_images")).scalars()) == {"boots"}
        conn.execute(sa.text("DELETE FROM products"))
        assert conn.execute(sa.text("SELECT count(*) FROM product_images")).scalar_one() == 0


def test_updated_at_moves_on_update(engine: Engine) -> None:
    with engine.begin() as conn:
        product = conn.execute(INSERT_PRODUCT, GOOD).scalar_one()
        conn.execute(INSERT_PHOTO, {**PHOTO, "id": product, "vec": _vec()})
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE products SET in_stock = false"))
        conn.execute(sa.text("UPDATE product_images SET position = 1"))
    with engine.connect() as conn:
        created, updated = conn.execute(sa.text("SELECT created_at, updated_at FROM products")).one()
        photo_created, photo_updated = conn.execute(sa.text("SELECT created_at, updated_at FROM product_images")).one()
    assert updated > created and photo_updated > photo_created


class _Space:
    def __init__(self, **kw: object) -> None:
        self.model_name = "vgg16-imagenet-gap"
        self.weights_id = "w" * 64
        self.preprocessing_version = "v1"
        self.dimension = 512
        self.__dict__.update(kw)


def test_embedding_space_is_recorded_and_enforced(engine: Engine) -> None:
    assert catalogue.stored_space(engine) is None
    catalogue.ensure_space(engine, _Space())
    catalogue.ensure_space(engine, _Space())  # same space: fine
    stored = catalogue.stored_space(engine)
    assert stored is not None and stored.preprocessing_version == "v1" and stored.dimension == 512
    with pytest.raises(EmbeddingSpaceMismatchError, match=r"preprocessing v1 .* vs v2"):
        catalogue.ensure_space(engine, _Space(preprocessing_version="v2"))
    with pytest.raises(EmbeddingSpaceMismatchError, match="weights"):
        catalogue.ensure_space(engine, _Space(weights_id="x" * 64))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO embedding_space (id, model_name, weights_id, preprocessing_version, dimension) "
                "VALUES (false, 'm', 'w', 'p', 512)"
            )
        )


def test_queries_refuse_vectors_of_another_space(engine: Engine) -> None:
    catalogue.check_space(engine, _Space())  # an empty catalogue accepts any space
    catalogue.ensure_space(engine, _Space())
    catalogue.check_space(engine, _Space())
    with pytest.raises(EmbeddingSpaceMismatchError, match="weights"):
        catalogue.check_space(engine, _Space(weights_id="x" * 64))


def test_a_stock_sync_updates_in_place(engine: Engine) -> None:
    # Stock flips touch no index (in_stock is in none, the vectors are in another table) and find room on their
    # page (fillfactor 80): heap-only updates, so a sync writes little and leaves the vector index alone.
    rng = np.random.default_rng(5)
    catalogue.upsert_products(
        engine,
        [catalogue.ProductRecord(sku=f"s{i:04d}", category="c", embedding=rng.random(512)) for i in range(3000)],
    )
    index_size = sa.text("SELECT pg_relation_size('ix_product_images_embedding')")
    with engine.connect() as conn:
        index_before = conn.execute(index_size).scalar_one()
    changed = catalogue.set_stock(engine, {f"s{i:04d}": False for i in range(0, 3000, 20)})
    assert changed == 150
    engine.dispose()  # the server counts a session's updates when it ends

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'products'::regclass")
            ).one()
        return row[0], row[1]

    deadline = time.monotonic() + 10
    while counts()[0] < 150 and time.monotonic() < deadline:
        time.sleep(0.2)
    updates, hot = counts()
    assert updates >= 150 and hot >= 0.95 * updates
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT pg_relation_size('ix_product_images_embedding')")).scalar_one() == index_before
        )
