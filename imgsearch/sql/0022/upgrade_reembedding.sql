-- Revision 0022: moving a catalogue to another embedding space in the background (imgsearch/reembedding.py).
-- Each photo gets room for its vector in the next space, filled while the current one keeps serving; the switch
-- renames it into place. Stored like embedding: inline, uncompressed.
ALTER TABLE product_images ADD COLUMN embedding_next vector(512);
ALTER TABLE product_images ALTER COLUMN embedding_next SET STORAGE PLAIN;
ALTER TABLE product_images ADD CONSTRAINT ck_product_images_embedding_next_nonzero
    CHECK (embedding_next IS NULL OR vector_norm(embedding_next) > 0);

-- The space a re-embedding under way moves the catalogue to (at most one row; none when nothing is under way).
CREATE TABLE embedding_space_next (
    id boolean PRIMARY KEY DEFAULT true CONSTRAINT ck_embedding_space_next_single_row CHECK (id),
    model_name text NOT NULL,
    weights_id text NOT NULL,
    preprocessing_version text NOT NULL,
    dimension integer NOT NULL CONSTRAINT ck_embedding_space_next_dimension CHECK (dimension = 512),
    started_at timestamp with time zone NOT NULL DEFAULT now()
);

CREATE TRIGGER product_images_forget_next_embedding BEFORE UPDATE OF embedding ON product_images
    FOR EACH ROW EXECUTE FUNCTION imgsearch_forget_next_embedding();
