"""Local features of every photo, and the candidates of a verified photo search in one round trip.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

Adds photo_features (each photo's SIFT keypoints, compact: imgsearch/local_features.py) and
a trigger that drops the features of a photo whose vector changes (a new picture), and
imgsearch_verification_candidates (the global search's top n with every photo's features), so that a search by
a shopper's photo can prove which candidate is the photographed product. Also adds visual words
(imgsearch/visual_words.py): visual_vocabularies, visual_word_photos and visual_word_postings (an inverted index
of every photo's quantised descriptors) and imgsearch_word_candidates, a second candidate source that proposes
the products sharing the most words with the photo. No row is touched: photos ingested before this revision
have no features until the next ingest computes them, and no words until a vocabulary is built. Downgrading
drops the features and the words.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = (
    "imgsearch_drop_stale_features",
    "imgsearch_verification_candidates",
    "imgsearch_forget_visual_words",
    "imgsearch_word_candidates",
)


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, revision, ("imgsearch_drop_stale_features",))  # the trigger's function, before the trigger
    sql.execute(conn, sql.load(revision, "upgrade_photo_features"))
    sql.install(conn, revision, ("imgsearch_forget_visual_words",))  # the visual words' trigger function
    sql.execute(conn, sql.load(revision, "upgrade_visual_words"))
    sql.install(conn, revision, NEW)


def downgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "downgrade_visual_words"))
    sql.execute(conn, sql.load(revision, "downgrade_photo_features"))
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
