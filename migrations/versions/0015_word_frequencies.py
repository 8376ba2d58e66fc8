"""Visual word frequencies: a search by photo reads only its rarest words' postings.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Adds visual_word_frequencies (how many photos had each word when its vocabulary was activated), counted here for
the vocabularies already built, and makes imgsearch_word_candidates read the query's words rarest first within a
budget of postings (the setting imgsearch.word_postings), so that its cost stops growing with the catalogue.
Downgrading drops the counts and puts back the search that reads every posting; no other row is touched.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Changed in this revision, same arguments and answer (replaced; the previous version comes back on downgrade).
CHANGED = ("imgsearch_word_candidates",)


def upgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "upgrade_word_frequencies"))
    sql.install(conn, revision, CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    sql.restore_previous(conn, revision, CHANGED)
    sql.execute(conn, sql.load(revision, "downgrade_word_frequencies"))
