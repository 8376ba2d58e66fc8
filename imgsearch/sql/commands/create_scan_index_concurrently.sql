-- The photos' IVF index that imgsearch_scan_candidates reads (imgsearch/scan_index.py): pgvector ivfflat over
-- every photo's raw vector, half precision, normalised, so that the Euclidean order is the cosine order and the
-- operator differs from the HNSW index's (no search of the catalogue-wide index is ever planned on this one).
-- Built without blocking writes (outside any transaction); the name and the number of lists are filled in by the
-- caller.
CREATE INDEX CONCURRENTLY {index} ON product_images
    USING ivfflat ((l2_normalize(embedding::halfvec(512))::halfvec(512)) halfvec_l2_ops) WITH (lists = {lists});
