"""The shop's words: full-text search over names, categories, descriptions and text attributes.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

Adds products.description (optional, a manifest column of that name) and products.words, the product's words as
full-text search reads them (imgsearch_product_words: name, then category and text attributes, then description),
kept in step by a trigger in the catalogue's language (catalogue_settings.text_language, 'english' until
imgsearch_set_text_language says otherwise), with a GIN index. The words of the products already there are
computed by the upgrade (every row is written once and kept). New functions: a search by words alone
(imgsearch_search_words), by vectors and words fused (imgsearch_similar_words), and the words as a filter of every
search through the setting imgsearch.words (imgsearch_similar, imgsearch_similar_multi and
imgsearch_word_candidates read it; same arguments and answers without it). The downgrade puts back revision 0018's
functions and drops the columns, the settings table and the new functions.
"""

from collections.abc import Sequence

from alembic import op

from imgsearch import sql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# New in this revision, in the order they are installed (dropped by the downgrade, with their arguments).
NEW = {
    "imgsearch_text_language": "",
    "imgsearch_product_words": "text, text, text, jsonb, regconfig",
    "imgsearch_products_words": "",
    "imgsearch_set_text_language": "regconfig",
    "imgsearch_words_query": "text",
    "imgsearch_search_words": "text, integer, text[], boolean, numeric, text[], jsonb",
}
# Changed in this revision, same arguments (their previous versions come back on downgrade).
CHANGED = ("imgsearch_similar_multi", "imgsearch_similar", "imgsearch_word_candidates")
# New, and calling the changed ones.
FUSION = {
    "imgsearch_similar_words": "vector[], text, integer, text[], boolean, numeric, text[], jsonb, double precision"
}


def upgrade() -> None:
    conn = op.get_bind()
    op.execute(
        """
        CREATE TABLE catalogue_settings (
            id boolean PRIMARY KEY DEFAULT true CONSTRAINT ck_catalogue_settings_one_row CHECK (id),
            text_language regconfig NOT NULL DEFAULT 'english'
        )
        """
    )
    op.execute("INSERT INTO catalogue_settings DEFAULT VALUES")
    op.execute(
        """
        ALTER TABLE products
            ADD COLUMN description text
                CONSTRAINT ck_products_description CHECK (length(description) <= 20000),
            ADD COLUMN words tsvector
        """
    )
    sql.install(conn, revision, tuple(NEW))
    # The words of the products already there; not a change of the products (updated_at stays).
    op.execute("ALTER TABLE products DISABLE TRIGGER products_touch_updated_at")
    op.execute(
        "UPDATE products SET words = imgsearch_product_words(name, category, description, attributes, "
        "imgsearch_text_language())"
    )
    op.execute("ALTER TABLE products ENABLE TRIGGER products_touch_updated_at")
    op.execute(
        "CREATE TRIGGER trg_products_words BEFORE INSERT OR UPDATE OF name, category, description, attributes "
        "ON products FOR EACH ROW EXECUTE FUNCTION imgsearch_products_words()"
    )
    op.execute("CREATE INDEX ix_products_words ON products USING gin (words)")
    sql.install(conn, revision, CHANGED)
    sql.install(conn, revision, tuple(FUSION))


def downgrade() -> None:
    conn = op.get_bind()
    for name, arguments in FUSION.items():
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}({arguments})")
    sql.restore_previous(conn, revision, CHANGED)
    op.execute("DROP TRIGGER IF EXISTS trg_products_words ON products")
    for name, arguments in reversed(NEW.items()):
        sql.execute(conn, f"DROP FUNCTION IF EXISTS {name}({arguments})")
    op.execute("DROP INDEX IF EXISTS ix_products_words")
    op.execute("ALTER TABLE products DROP COLUMN words, DROP COLUMN description")
    op.execute("DROP TABLE catalogue_settings")
