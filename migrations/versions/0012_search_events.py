"""Shoppers' events (impressions, clicks, carts, purchases) and the report that measures the search with them.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Adds search_events (what a shop's website reports that shoppers did with the results; imgsearch/feedback.py),
imgsearch_record_events (a batch stored idempotently by the website's event ids, callable by the website's
reader role), imgsearch_forget_events (the retention) and imgsearch_event_report (the sums behind click-through
by rank, mean reciprocal rank, conversion, by category and by variant). No catalogue row is touched;
downgrading drops the events.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision (dropped by the downgrade).
NEW = ("imgsearch_record_events", "imgsearch_forget_events", "imgsearch_event_report")


def upgrade() -> None:
    conn = op.get_bind()
    sql.execute(conn, sql.load(revision, "upgrade_search_events"))
    sql.install(conn, revision, NEW)


def downgrade() -> None:
    conn = op.get_bind()
    for name in NEW:
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}")
    sql.execute(conn, sql.load(revision, "downgrade_search_events"))
