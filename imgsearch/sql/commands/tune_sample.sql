-- (Run through psycopg, whose named parameters these are.)
-- The photos imgsearch tune learns from: those of up to n products drawn by a seeded hash of their SKU (the same
-- draw for the same catalogue and seed), leaving out the excluded SKUs (cross-validation's held-out products).
SELECT i.embedding, i.category, i.product_id
FROM product_images i
WHERE i.product_id IN (
    SELECT p.id FROM products p
    WHERE p.sku <> ALL(CAST(%(excluded)s AS text[]))
    ORDER BY hashtextextended(p.sku, %(seed)s)
    LIMIT %(n)s
)
ORDER BY i.id
