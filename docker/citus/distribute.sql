-- Distributes an imgsearch catalogue over the Citus cluster of docker-compose.yml's "citus" profile, as planned in
-- docs/scaling.md ("Sharding on Citus"). Written from Citus's documentation and source; never run against Citus
-- (the machine it was written on has no Docker engine and cannot install Citus).
--
-- Run it once on the coordinator, as the superuser, after `imgsearch db upgrade` (and after the catalogue's first
-- ingest: see "What it costs" in docs/scaling.md):
--
--   docker compose --profile citus exec -T citus-coordinator \
--       psql -U imgsearch -d imgsearch < docker/citus/distribute.sql
--
-- psql variables: schema (imgsearch's schema, default imgsearch), shard_count (default 8, four per worker: each
-- search walks the HNSW index of every shard, so more shards cost every search more work). Either everything
-- below happens or nothing does.
--
-- - products is hash-distributed by id; product_images and tuned_images by product_id, co-located with it, so that
--   a product, its photos and their tuned vectors are on one node: the search's joins stay on each worker, and
--   the triggers that keep a photo's category and tuned vector in step only touch co-located shards (Citus lets a
--   trigger on a shard reach co-located shards on its own node, nothing else).
-- - embedding_space, search_spaces and search_space_rows become reference tables (a copy on every node); so do
--   catalogue_settings (revision 0019: the language of the products' words, read by their trigger on every node)
--   and embedding_space_next (revision 0022: the space `imgsearch reembed` moves the catalogue to).
-- - photo_features, visual_word_photos and visual_word_postings (revision 0009: local features and visual words)
--   are hash-distributed by image_id, co-located with each other but not with the photos (they have no product_id):
--   a photo's features, its words and their cascade stay on one node; visual_vocabularies is a reference table,
--   and so is visual_word_frequencies (revision 0015: a count per word and vocabulary, read by every photo search).
--   Their link to product_images cannot be enforced across co-location groups: the foreign key and the trigger
--   that drops a re-embedded photo's features go (searches reach features through the photos, so features of a
--   removed photo are never used; ingestion rewrites a changed photo's features).
-- - alembic_version stays a local table of the coordinator: `imgsearch db` commands run there. So do the shoppers'
--   events and their sums (revision 0012: search_events, search_event_counts, search_summaries): written and
--   read on the coordinator only, their size is the traffic's, not the catalogue's. imgsearch_record_events fills
--   an event's missing category from products, a distributed table looked up by SKU: on Citus, send each
--   event's category with it. api_keys (revision 0013) stays local too: the service checks keys on the
--   coordinator.
--
-- Citus enforces a primary key, a unique constraint or a foreign key between distributed tables only if it
-- includes the distribution column. So, before distributing:
-- - products loses its unique constraint on sku (a plain index keeps SKU look-ups fast): SKUs are no longer unique
--   by the database's own guarantee, and ingestion's ON CONFLICT (sku) has nothing to match (docs/scaling.md).
-- - product_images' primary key becomes (product_id, id); uq_product_images_product_image already includes
--   product_id.
-- - tuned_images' primary key becomes (product_id, image_id), and its foreign key to the photos
--   (product_id, image_id) -> product_images (product_id, id).
-- Foreign keys are dropped while the tables change kind (Citus refuses a key between a local and a distributed
-- table) and added back once both ends are distributed, with their ON DELETE CASCADE.

\set ON_ERROR_STOP on
\if :{?schema}
\else
\set schema imgsearch
\endif
\if :{?shard_count}
\else
\set shard_count 8
\endif

BEGIN;
SET LOCAL search_path TO :"schema", public;
-- One connection per worker for the whole transaction: DDL, data copies and foreign keys in one transaction.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
SET LOCAL citus.shard_count TO :shard_count;
-- products and product_images have triggers (updated_at, a photo's category, the tuned vector): Citus distributes
-- a table with triggers only with this set.
SET LOCAL citus.enable_unsafe_triggers TO on;

DO $$
DECLARE
    tables text;
BEGIN
    -- The tables and constraint names below are those of imgsearch's schema since revision 0022 (re-embedding).
    SELECT string_agg(relname, ' ' ORDER BY relname) INTO tables
    FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p');
    IF tables IS DISTINCT FROM
            'alembic_version api_keys catalogue_settings embedding_space embedding_space_next photo_features '
            'product_images products '
            'search_event_counts '
            'search_events search_space_rows search_spaces search_summaries tuned_images visual_vocabularies '
            'visual_word_frequencies visual_word_photos visual_word_postings' THEN
        RAISE EXCEPTION 'distribute.sql does not know this schema''s tables: %', tables
            USING HINT = 'an unfinished imgsearch tune leaves tuned_images_next; a newer imgsearch may have added '
                         'a table distribute.sql must place';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'products'::regclass) THEN
        RAISE EXCEPTION 'products is already distributed';
    END IF;
    IF EXISTS (SELECT 1 FROM search_spaces WHERE active) THEN
        RAISE EXCEPTION 'a tuned search space is active: retire it first (imgsearch tune --drop)';
    END IF;
END
$$;

-- Keys that include the distribution column (while the tables are still local).
ALTER TABLE tuned_images DROP CONSTRAINT tuned_images_image_id_fkey;
ALTER TABLE product_images DROP CONSTRAINT product_images_product_id_fkey;
ALTER TABLE search_space_rows DROP CONSTRAINT search_space_rows_space_id_fkey;
ALTER TABLE photo_features DROP CONSTRAINT photo_features_image_id_fkey;
DROP TRIGGER product_images_drop_stale_features ON product_images;
ALTER TABLE visual_word_postings DROP CONSTRAINT fk_visual_word_postings_photo;
ALTER TABLE visual_word_photos DROP CONSTRAINT visual_word_photos_image_id_fkey,
    DROP CONSTRAINT visual_word_photos_vocabulary_id_fkey;
ALTER TABLE products DROP CONSTRAINT products_sku_key;
CREATE INDEX ix_products_sku ON products (sku);
ALTER TABLE product_images DROP CONSTRAINT product_images_pkey,
    ADD CONSTRAINT product_images_pkey PRIMARY KEY (product_id, id);
ALTER TABLE tuned_images DROP CONSTRAINT tuned_images_pkey,
    ADD CONSTRAINT tuned_images_pkey PRIMARY KEY (product_id, image_id);

-- A copy on every node.
SELECT create_reference_table('embedding_space');
SELECT create_reference_table('embedding_space_next');
SELECT create_reference_table('catalogue_settings');
SELECT create_reference_table('search_spaces');
SELECT create_reference_table('search_space_rows');
SELECT create_reference_table('visual_vocabularies');
SELECT create_reference_table('visual_word_frequencies');

-- Sharded by product, co-located. Rows already in the tables are copied into the shards.
SELECT create_distributed_table('products', 'id');
SELECT create_distributed_table('product_images', 'product_id', colocate_with => 'products');
SELECT create_distributed_table('tuned_images', 'product_id', colocate_with => 'products');
SELECT create_distributed_table('photo_features', 'image_id', colocate_with => 'none');
SELECT create_distributed_table('visual_word_photos', 'image_id', colocate_with => 'photo_features');
SELECT create_distributed_table('visual_word_postings', 'image_id', colocate_with => 'photo_features');

ALTER TABLE search_space_rows ADD CONSTRAINT search_space_rows_space_id_fkey
    FOREIGN KEY (space_id) REFERENCES search_spaces (id) ON DELETE CASCADE;
ALTER TABLE product_images ADD CONSTRAINT product_images_product_id_fkey
    FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE CASCADE;
ALTER TABLE tuned_images ADD CONSTRAINT tuned_images_image_id_fkey
    FOREIGN KEY (product_id, image_id) REFERENCES product_images (product_id, id) ON DELETE CASCADE;
ALTER TABLE visual_word_photos ADD CONSTRAINT visual_word_photos_image_id_fkey
    FOREIGN KEY (image_id) REFERENCES photo_features (image_id) ON DELETE CASCADE,
    ADD CONSTRAINT visual_word_photos_vocabulary_id_fkey
    FOREIGN KEY (vocabulary_id) REFERENCES visual_vocabularies (id) ON DELETE CASCADE;
ALTER TABLE visual_word_postings ADD CONSTRAINT fk_visual_word_postings_photo
    FOREIGN KEY (image_id, vocabulary_id) REFERENCES visual_word_photos (image_id, vocabulary_id) ON DELETE CASCADE;

-- The coordinator's own copies of the rows now in the shards (invisible to queries, but still on disk).
SELECT truncate_local_data_after_distributing_table(t::regclass)
FROM unnest(ARRAY['tuned_images', 'product_images', 'products', 'search_space_rows', 'search_spaces',
                  'embedding_space', 'embedding_space_next', 'visual_word_postings', 'visual_word_photos', 'photo_features',
                  'visual_word_frequencies', 'visual_vocabularies', 'catalogue_settings']) AS t;
COMMIT;

-- The search function's SET clauses (hnsw.iterative_scan, hnsw.ef_search, hnsw.max_scan_tuples) apply on the
-- coordinator only, so the workers' database gets the same values as its defaults (for connections made from now
-- on): every shard's index walk then scans iteratively and collects 100 candidates. imgsearch raises ef_search
-- above 100 for k > 100 or a configured imgsearch.ef_search; that reaches the coordinator only.
DO $$
DECLARE
    failures text;
BEGIN
    SELECT string_agg(format('%s: %s', w.nodename, w.result), '; ') INTO failures
    FROM (VALUES ('hnsw.iterative_scan', 'relaxed_order'), ('hnsw.ef_search', '100'),
                 ('hnsw.max_scan_tuples', '50000')) AS s (setting, value),
         LATERAL run_command_on_workers(
             format('ALTER DATABASE %I SET %s = %L', current_database(), s.setting, s.value)) AS w
    WHERE NOT w.success;
    IF failures IS NOT NULL THEN
        RAISE EXCEPTION 'the tables are distributed, but the search settings did not reach every worker: %',
            failures;
    END IF;
END
$$;
