"""The common search takes a short way; room in the products' pages for stock updates.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22

imgsearch_similar answers one query vector with no filter but stock in prepared statements, without the count
(every other search goes through imgsearch_similar_multi as before). products gets fillfactor 80, so that stock
flips are heap-only updates. No row is touched.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Changed in this revision (their previous versions come back on downgrade).
CHANGED = ("imgsearch_similar",)


def upgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "upgrade_room_for_updates"))
    sql.install(conn, revision, CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    sql.restore_previous(conn, revision, CHANGED)
    sql.execute(conn, sql.load(revision, "downgrade_room_for_updates"))
