-- The tuned search space (imgsearch tune): a linear map learnt from the catalogue's own categories, stored in the
-- database so that searches project query vectors themselves, and every photo's projected vector with its own
-- HNSW index. The raw VGG16 vectors in product_images stay the stored truth; without an active space nothing
-- changes. Run by revision 0006 inside imgsearch's schema (the first of the search_path).

-- Every map learnt, newest last; at most one is active. A space that is not active any more is kept as the
-- record of what was learnt when (its map rows are deleted by imgsearch tune when it is replaced).
CREATE TABLE search_spaces (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- the family and its parameters (imgsearch/projection.py), and what it was learnt from
    method text NOT NULL,
    parameters jsonb NOT NULL DEFAULT '{}',
    products integer NOT NULL,
    photos integer NOT NULL,
    categories text[] NOT NULL,
    -- the catalogue's size when it was learnt (the sample may be smaller)
    catalogue_products integer NOT NULL,
    -- subtracted after the map (the map applied to the centre it learnt), or NULL
    shift vector(512),
    active boolean NOT NULL DEFAULT false,
    activated_at timestamptz,
    retired_at timestamptz,
    CONSTRAINT ck_search_spaces_counts CHECK (products >= 0 AND photos >= products AND catalogue_products >= 0)
);
CREATE UNIQUE INDEX ux_search_spaces_active ON search_spaces (active) WHERE active;

-- The map, one output dimension per row: tuned[position] = <direction, raw> (pgvector's inner_product).
CREATE TABLE search_space_rows (
    space_id integer NOT NULL REFERENCES search_spaces (id) ON DELETE CASCADE,
    position smallint NOT NULL,
    direction vector(512) NOT NULL,
    PRIMARY KEY (space_id, position),
    CONSTRAINT ck_search_space_rows_position CHECK (position BETWEEN 0 AND 511)
);
-- In the row, not in TOAST: a query's projection reads all 512 rows.
ALTER TABLE search_space_rows ALTER COLUMN direction SET STORAGE PLAIN;

-- Every photo's vector in the active space, with the photo's product and category (category indexes filter on
-- it). Filled by imgsearch tune, kept in step by the trigger below; empty when no space is active.
CREATE TABLE tuned_images (
    image_id bigint PRIMARY KEY REFERENCES product_images (id) ON DELETE CASCADE,
    product_id bigint NOT NULL,
    category text NOT NULL,
    embedding vector(512) NOT NULL
);
ALTER TABLE tuned_images ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX ix_tuned_images_product ON tuned_images (product_id);
CREATE INDEX ix_tuned_images_embedding ON tuned_images
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);

CREATE TRIGGER product_images_project AFTER INSERT OR UPDATE OF embedding, category ON product_images
    FOR EACH ROW EXECUTE FUNCTION imgsearch_project_image();
