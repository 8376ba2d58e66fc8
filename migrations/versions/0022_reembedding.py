"""Room for every photo's vector in the next embedding space: moving a catalogue to another pipeline in place.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07

Adds product_images.embedding_next (each photo's vector in the space a re-embedding moves the catalogue to; NULL
until computed), embedding_space_next (that space, while a re-embedding is under way) and a trigger that forgets a
photo's next vector when its current one changes (a new picture). `imgsearch reembed` fills them while searches use
the current vectors and then switches (imgsearch/reembedding.py). No existing row is changed. The downgrade drops
them: a re-embedding under way is abandoned, the current vectors stay.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    conn = op.get_bind()
    sql.install(conn, revision, ("imgsearch_forget_next_embedding",))  # the trigger's function, before the trigger
    sql.execute(conn, sql.load(revision, "upgrade_reembedding"))


def downgrade() -> None:
    conn = op.get_bind()
    # A switch renames the indexes it built on embedding_next into place; copies of an unfinished one go here.
    sql.execute(
        conn,
        "DO $$DECLARE name text; BEGIN FOR name IN SELECT c.relname FROM pg_index i JOIN pg_class c "
        "ON c.oid = i.indexrelid WHERE i.indrelid = 'product_images'::regclass AND c.relname LIKE 'next\\_%' "
        "LOOP EXECUTE format('DROP INDEX %I', name); END LOOP; END$$",
    )
    sql.execute(conn, sql.load(revision, "downgrade_reembedding"))
