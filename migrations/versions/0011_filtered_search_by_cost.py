"""Filtered searches choose their plan by cost and walk named categories' own indexes; many searches in one call.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

imgsearch_similar_multi no longer counts the matching products: it takes the planner's estimate and compares
the cost of ranking them exactly with the cost of walking an HNSW index (docs/filtered-search.md); the walk
collects k products' worth of photos (up to 2k where the graph search's first candidates hold them) instead of
ef_search products' worth, and a search naming up to four categories that all have their own index walks each of
them. imgsearch_similar's short way ranks only the k products whose walked photos are nearest. New:
imgsearch_similar_many, many searches in one call. No table and no row is touched; downgrading puts the previous
functions back and drops the new one.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_similar_many",)
# Changed in this revision (their previous versions come back on downgrade).
CHANGED = ("imgsearch_similar_multi", "imgsearch_similar")


def upgrade() -> None:
    sql.install(op.get_bind(), revision, CHANGED + NEW)


def downgrade() -> None:
    conn = op.get_bind()
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
    sql.restore_previous(conn, revision, CHANGED)
