"""Alembic migrations of the imgsearch schema (installed as imgsearch.migrations)."""
