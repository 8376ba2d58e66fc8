"""API keys that expire.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Adds api_keys.expires_at (NULL: never; existing keys keep working) and makes imgsearch_api_key refuse an expired
key and say so. Downgrading revokes the keys that have expired (none works again) and drops the column.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Changed in this revision, with another answer (dropped, then created; the previous version comes back on
# downgrade).
CHANGED = ("imgsearch_api_key",)


def upgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "upgrade_api_key_expiry"))
    sql.install(conn, revision, CHANGED)


def downgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "downgrade_api_key_expiry"))
    sql.restore_previous(conn, revision, CHANGED)
