"""Quicker filtered searches: fewer statements and plans per search, walks as long as pgvector's own query.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-08

Changes two functions; no table, row or index is touched.
- imgsearch_similar_multi: once the planner's estimate has chosen the exact ranking, its statement compares the
  products' attributes and words with a sub-select of the filter, so the planner does not run the jsonpath over the
  column's 1,000-object histogram a second time (the GIN indexes still serve the filter). The categories' own
  indexes are looked up in one statement. Filters estimated to match fewer than 100 products (was 1,000) are
  ranked exactly whatever the cost says; above that the cost decides.
- imgsearch_similar: the walk reads k products' worth of photos plus room for each product's other photos (k when
  every product has one photo, as pgvector's own filtered query reads), instead of 2k; the search space, the
  photos per product and the category's index are read in one statement, and a category's walk picks the k
  candidates itself.
- Both: photos per product to one decimal (200,008 photos for 200,000 products asked every walk for an eleventh).
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
