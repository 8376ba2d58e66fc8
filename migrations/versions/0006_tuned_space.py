"""A tuned search space: a linear map learnt from the catalogue's categories (imgsearch tune), applied by the
database itself.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

Adds search_spaces (every map learnt, at most one active), search_space_rows (the map as rows of vector(512)),
tuned_images (every photo's vector in the active space, with its own HNSW index) and a trigger that projects
photos added while a space is active. The search functions project their query vectors into the active space
and search tuned_images; with no active space (the state after this upgrade) they answer as before. The raw
vectors are not touched. Downgrading drops what was learnt.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade), in creation order.
NEW = (
    "imgsearch_active_space",
    "imgsearch_project",
    "imgsearch_project_image",
    "imgsearch_tuned_category_index_name",
    "imgsearch_discard_space_table",
    "imgsearch_prepare_space_table",
    "imgsearch_index_space_table",
    "imgsearch_activate_space",
    "imgsearch_retire_space",
    "imgsearch_space_status",
)
# Changed in this revision (their previous versions come back on downgrade).
CHANGED = ("imgsearch_similar_multi", "imgsearch_create_category_index", "imgsearch_drop_category_index")


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, revision, ("imgsearch_project_image",))  # the trigger's function, before the trigger
    sql.execute(conn, sql.load(revision, "upgrade_tuned_space"))
    sql.install(conn, revision, NEW + CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    sql.restore_previous(conn, revision, CHANGED)
    sql.execute(conn, "DROP TABLE IF EXISTS tuned_images_next")  # an unfinished imgsearch tune's
    sql.execute(conn, sql.load(revision, "downgrade_tuned_space"))
    for name in reversed(NEW):
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
