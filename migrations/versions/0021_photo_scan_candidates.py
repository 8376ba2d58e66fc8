"""A second source of a verified photo search's nearest products: the photos' IVF index.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07

Adds imgsearch_scan_candidates (the products nearest to a vector through ix_product_images_scan, an ivfflat index
over the photos' raw vectors) and changes imgsearch_photo_candidates to rank its global candidates by distance
over both the HNSW walk and that scan. No table or row is touched and no index is built here: ingestion builds the
index once the catalogue has enough photos (imgsearch/scan_index.py; `imgsearch index scan` builds it at once).
The downgrade drops the function and the index and puts revision 0018's imgsearch_photo_candidates back.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = {
    "imgsearch_scan_candidates": "vector, integer, text, text[], boolean, numeric, text[], jsonb",
}
CHANGED = ("imgsearch_photo_candidates",)


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, revision, tuple(NEW))
    sql.install(conn, revision, CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    sql.restore_previous(conn, revision, CHANGED)
    for name, arguments in NEW.items():
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}({arguments})")
    op.execute("DROP INDEX IF EXISTS ix_product_images_scan")
