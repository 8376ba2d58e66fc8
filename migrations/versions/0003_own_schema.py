"""imgsearch's own PostgreSQL schema; SQL functions from the packaged .sql files, pinned to that schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

The migration environment runs every revision inside imgsearch's schema (``imgsearch`` unless configured), so on
a fresh install revisions 0001 and 0002 already created the tables there. A catalogue made before this revision
lives in ``public``: it is moved over with every row and index (``adopt_public_catalogue.sql``). Then every
function is (re)created from ``imgsearch/sql/0003/`` with ``SET search_path FROM CURRENT``, so the functions find
the catalogue whatever the caller's search_path, and a database migrated before the functions' last changes in
0001/0002 receives them too.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# In creation order: helpers before the functions whose bodies SQL validates at creation time.
FUNCTIONS = (
    "imgsearch_touch_updated_at",
    "imgsearch_similar",
    "imgsearch_similar_to_sku",
    "imgsearch_cheaper",
    "imgsearch_category_index_name",
    "imgsearch_category_index_exists",
    "imgsearch_category_indexes",
    "imgsearch_create_category_index",
    "imgsearch_drop_category_index",
)

# The texts revisions 0001 and 0002 created, for the downgrade (their modules keep them as constants).
_PREVIOUS = {
    "0001": ("SIMILAR_FUNCTION", "SIMILAR_TO_SKU_FUNCTION", "CHEAPER_FUNCTION"),
    "0002": ("NAME_FUNCTION", "EXISTS_FUNCTION", "LIST_FUNCTION", "CREATE_FUNCTION", "DROP_FUNCTION"),
}


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, "0003", ["adopt_public_catalogue"])
    sql.install(conn, "0003", FUNCTIONS)


def downgrade() -> None:
    # Back to the functions of 0001/0002 (the tables stay in the schema). The trigger function is the same in
    # both versions and the trigger depends on it, so it stays.
    conn = op.get_bind()
    script = op.get_context().script
    assert script is not None
    for name in FUNCTIONS[1:]:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
    for rev, constants in _PREVIOUS.items():
        module = script.get_revision(rev).module
        for constant in constants:
            sql.execute(conn, getattr(module, constant))
