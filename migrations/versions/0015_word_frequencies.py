"""Visual word frequencies: the word search takes its idf from counts and looks up fewer products.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Adds visual_word_frequencies (how many photos had each word when its vocabulary was activated), counted here for
the vocabularies already built. imgsearch_word_candidates takes the idf from those counts instead of aggregating
the postings it reads, looks up products for the best-scoring photos only, and reads the query's words rarest
first when the setting imgsearch.word_postings caps the postings read (no cap by default). Same arguments and
answer. Downgrading drops the counts and puts back revision 0009's function; no other row is touched.
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
