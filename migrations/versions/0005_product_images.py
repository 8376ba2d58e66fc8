"""Several photos per product: vectors move from products to product_images; searches rank products by their
best photo.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

Every product's photo becomes its first row in product_images, with the same reference, hash, vector and
timestamps; the HNSW index and the category indexes are built again on the new table (minutes at a million
products). products keeps the metadata only, so stock and price syncs no longer touch a table with a vector
index. The search functions return one row per product (its best-matching photo). Downgrading refuses while any
product has several photos or none: the older schema holds exactly one.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade), in creation order.
NEW = (
    "imgsearch_image_category",
    "imgsearch_product_category",
    "imgsearch_product_photos",
    "imgsearch_similar_multi",
    "imgsearch_near_duplicates",
)
# Changed in this revision (their previous versions come back on downgrade).
CHANGED = (
    "imgsearch_category_index_exists",
    "imgsearch_category_indexes",
    "imgsearch_create_category_index",
    "imgsearch_similar",
    "imgsearch_similar_to_sku",
    "imgsearch_cheaper",
)
_REBUILD_CATEGORY_INDEXES = "SELECT imgsearch_create_category_index(category) FROM imgsearch_moved_category_indexes"


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, revision, NEW[:2])  # the triggers' functions, before the table that uses them
    sql.execute(conn, sql.load(revision, "upgrade_product_images"))
    sql.install(conn, revision, NEW[2:] + CHANGED)
    sql.execute(conn, _REBUILD_CATEGORY_INDEXES)


def downgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "downgrade_product_images"))
    sql.restore_previous(conn, revision, CHANGED)
    for name in reversed(NEW):
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
    sql.execute(conn, _REBUILD_CATEGORY_INDEXES)
