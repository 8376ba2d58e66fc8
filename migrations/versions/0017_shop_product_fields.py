"""The shop's own product id and page address on every product.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

Adds products.shop_product_id (the shop's own id of the product, so that a result joins back to the shop's database
without parsing SKUs) and products.page_url (the product's page on the shop's site, http or https), both optional
and empty for the products already there; every row is kept. The downgrade drops the two columns and what they held.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without a default: added without rewriting the table.
    op.execute(
        """
        ALTER TABLE products
            ADD COLUMN shop_product_id text
                CONSTRAINT ck_products_shop_product_id
                CHECK (length(btrim(shop_product_id)) > 0 AND length(shop_product_id) <= 255),
            ADD COLUMN page_url text
                CONSTRAINT ck_products_page_url
                CHECK (page_url ~ '^https?://[^[:space:]]+$' AND length(page_url) <= 4096)
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE products DROP COLUMN page_url, DROP COLUMN shop_product_id")
