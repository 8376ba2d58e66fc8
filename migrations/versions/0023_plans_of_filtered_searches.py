"""Quicker filtered searches: the exact ranking plans attribute and word filters once, the common walk reads k.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08

Changes two functions; no table, row or index is touched.
- imgsearch_similar_multi: once the planner's estimate has chosen the exact ranking, its statement compares the
  products' attributes and words with a sub-select of the filter, so the planner does not run the jsonpath over the
  column's 1,000-object histogram a second time (the GIN indexes still serve the filter).
- imgsearch_similar: the walk of the common search reads k products' worth of photos plus room for each product's
  other photos (k when every product has one photo, as pgvector's own filtered query reads), instead of 2k.
The downgrade puts back both as revision 0019 left them.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANGED = ("imgsearch_similar_multi", "imgsearch_similar")


def upgrade() -> None:
    sql.install(op.get_bind(), revision, CHANGED)


def downgrade() -> None:
    sql.restore_previous(op.get_bind(), revision, CHANGED)
