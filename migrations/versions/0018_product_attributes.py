"""The shop's attributes on every product, and attribute filters in every search.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

Adds products.attributes: a JSON object of the shop's own attributes of the product (brand, size, colour, a rating:
text, numbers, booleans, lists of text), empty ('{}') for the products already there, with a GIN index
(jsonb_path_ops) for equality filters and column statistics ten times finer than the default, so that the planner's
estimate of a rare attribute value (what the search's cost-based plan starts from) is not a guess. Adds
imgsearch_attribute_filter (a search's filters as a jsonpath predicate) and a last argument ``filters jsonb DEFAULT
NULL`` to every search function; calls without it answer as before. Every row is kept (adding a column with a
constant default rewrites nothing). The downgrade puts back the previous functions and drops the column and what it
held.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_attribute_filter",)
# Changed in this revision: each gains a last argument, filters (so the old signature is dropped first). Installed
# in this order: an SQL-language function checks the functions it calls when it is created.
ARGUMENTS = {
    "imgsearch_similar_multi": "vector[], integer, text[], boolean, numeric, text[], numeric",
    "imgsearch_similar": "vector, integer, text[], boolean, numeric, text[], numeric",
    "imgsearch_similar_many": "vector[], integer, text[], boolean, numeric, text[], numeric",
    "imgsearch_similar_to_sku": "text, integer, text[], boolean, numeric",
    "imgsearch_cheaper": "text, integer, boolean",
    "imgsearch_word_candidates": "integer[], integer, text, text[], boolean, numeric, text[], integer, vector",
    "imgsearch_verification_candidates": "vector, integer, text, text[], boolean, numeric, text[]",
    "imgsearch_photo_candidates": (
        "vector, integer, text, integer[], integer, integer, text, text, text, text[], boolean, numeric, text[]"
    ),
}
CHANGED = tuple(ARGUMENTS)


def upgrade() -> None:
    conn = op.get_bind()
    op.execute(
        """
        ALTER TABLE products
            ADD COLUMN attributes jsonb NOT NULL DEFAULT '{}'
                CONSTRAINT ck_products_attributes CHECK (jsonb_typeof(attributes) = 'object'),
            ALTER COLUMN attributes SET STATISTICS 1000
        """
    )
    op.execute("CREATE INDEX ix_products_attributes ON products USING gin (attributes jsonb_path_ops)")
    sql.install(conn, revision, NEW)
    for name, arguments in ARGUMENTS.items():
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}({arguments})")
    sql.install(conn, revision, CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    for name, arguments in ARGUMENTS.items():
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}({arguments}, jsonb)")
    sql.restore_previous(conn, revision, CHANGED)
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}(jsonb)")
    op.execute("DROP INDEX IF EXISTS ix_products_attributes")
    op.execute("ALTER TABLE products DROP COLUMN attributes")
