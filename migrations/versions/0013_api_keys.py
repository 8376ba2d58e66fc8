"""API keys of the HTTP service.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Adds api_keys (a SHA-256 digest of each key, its name and scope, when it was made and revoked;
imgsearch/keys.py) and imgsearch_api_key, the service's check of a key. No other table is touched; downgrading
drops the keys.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_api_key",)


def upgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "upgrade_api_keys"))
    sql.install(conn, revision, NEW)


def downgrade() -> None:
    conn = op.get_bind()
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
    sql.execute(conn, sql.load(revision, "downgrade_api_keys"))
