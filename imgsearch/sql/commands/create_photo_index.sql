-- The catalogue-wide HNSW index over the photos as the head revision defines it (0008: half-precision vectors),
-- for loads that drop it and build it once at the end (benchmarks' bulk loads).
CREATE INDEX IF NOT EXISTS ix_product_images_embedding ON product_images
    USING hnsw ((embedding::halfvec(512)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64);
