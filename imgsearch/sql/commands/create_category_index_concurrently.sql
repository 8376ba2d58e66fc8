-- A category index built without blocking writes (outside any transaction), on product_images or tuned_images;
-- the same graph parameters and half-precision vectors as imgsearch_create_category_index. The names are filled
-- in by the caller.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table}
    USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops)
    WITH (m = 16, ef_construction = 64) WHERE category = {category};
