-- (Run through psycopg, whose named parameters these are.)
-- One batch of photos for imgsearch tune to project, in id order after a given id, with the version of each row
-- (xmin) so that imgsearch_activate_space can catch up the photos changed after they were read.
SELECT i.id, i.product_id, i.category, i.embedding, i.xmin::text::bigint AS source_xmin
FROM product_images i
WHERE i.id > %(after)s
ORDER BY i.id
LIMIT %(n)s
