"""The search space per session: both arms of an A/B test of a tuned space in one catalogue.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Adds imgsearch_search_space(): the active tuned space, unless the session (or transaction) setting
imgsearch.search_space is 'raw', which searches the raw VGG16 vectors while a tuned space stays active; any other
value is an error.
imgsearch_similar and imgsearch_similar_multi (and so every search built on them) ask it instead of
imgsearch_active_space(). Same arguments and answers when the setting is not used. No row is touched; the
downgrade puts back revision 0011's functions and drops the new one.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_search_space",)
# Changed in this revision, same arguments and answers (their previous versions come back on downgrade).
CHANGED = ("imgsearch_similar", "imgsearch_similar_multi")


def upgrade() -> None:
    sql.install(op.get_bind(), revision, NEW + CHANGED)


def downgrade() -> None:
    sql.restore_previous(op.get_bind(), revision, CHANGED)
    for name in NEW:
        sql.execute(op.get_bind(), f"DROP FUNCTION IF EXISTS {name}()")
