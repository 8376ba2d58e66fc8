"""Photo indexes over half-precision vectors: half the memory at the same recall.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23

Every HNSW index over the photos' vectors (the catalogue-wide one, the category indexes, the tuned space's) is
rebuilt over embedding::halfvec(512), and the search functions walk them with half-precision query vectors; the
vectors stay in full precision and candidates are still ranked exactly on them. The common search
(imgsearch_similar's short way) plans its statements once per session instead of once per call. No row is
touched. The upgrade rebuilds the indexes in one transaction: searches keep the old indexes until it commits,
writes wait for it (8.5 minutes for a million photos and 32 indexes on two cores: docs/operations.md). The
downgrade rebuilds them over the full-precision vectors.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_planner_defaults",)
# Changed in this revision (their previous versions come back on downgrade).
CHANGED = (
    "imgsearch_similar",
    "imgsearch_similar_multi",
    "imgsearch_near_duplicates",
    "imgsearch_create_category_index",
    "imgsearch_index_space_table",
)


def _rebuild(to_half: bool) -> None:
    text = sql.load(revision, "rebuild_photo_indexes").replace("{to_half}", "true" if to_half else "false")
    sql.execute(op.get_bind(), text)


def upgrade() -> None:
    _rebuild(to_half=True)
    sql.install(op.get_bind(), revision, NEW + CHANGED)


def downgrade() -> None:
    sql.restore_previous(op.get_bind(), revision, CHANGED)
    for name in NEW:
        sql.execute(op.get_bind(), f"DROP FUNCTION IF EXISTS {name}")
    _rebuild(to_half=False)
