-- A category index built without blocking writes (outside any transaction); the same graph parameters as
-- imgsearch_create_category_index. {index} and {category} are filled in by the caller.
CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON product_images USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64) WHERE category = {category};
