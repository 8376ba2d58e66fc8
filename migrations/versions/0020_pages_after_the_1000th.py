"""Pages past the 1000th result of a vector search.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07

Adds imgsearch_similar_after: the k products after a given result (its distance and SKU) of a search by vectors,
under the same filters, ranked exactly; a result's cursor continues there when its page would end past the 1000th
result. No table or row is touched; the downgrade drops the function.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = {
    "imgsearch_similar_after": ("vector[], double precision, text, integer, text[], boolean, numeric, text[], jsonb"),
}


def upgrade() -> None:
    sql.install(op.get_bind(), revision, tuple(NEW))


def downgrade() -> None:
    for name, arguments in NEW.items():
        sql.execute(op.get_bind(), f"DROP FUNCTION IF EXISTS {name}({arguments})")
