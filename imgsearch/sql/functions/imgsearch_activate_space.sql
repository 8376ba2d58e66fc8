-- Last step of imgsearch tune: makes the space whose vectors fill tuned_images_next the active one, in one short
-- transaction. Photos added, changed or removed since they were read are caught up (projected here, by
-- imgsearch_project) first without a lock, then again while writers to product_images wait (searches do not);
-- then the new table takes tuned_images' place with the same grants, and the previous space is retired (its
-- map deleted, its record kept). Returns the number of photos caught up.
CREATE OR REPLACE FUNCTION imgsearch_activate_space(space integer) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    caught_up bigint := 0;
    changed bigint;
    pass integer;
    grant_row record;
    twin record;
BEGIN
    IF to_regclass('tuned_images_next') IS NULL OR NOT EXISTS (SELECT 1 FROM search_spaces s WHERE s.id = space) THEN
        RAISE EXCEPTION 'imgsearch: no prepared search space %', space USING ERRCODE = '55000';
    END IF;
    FOR pass IN 1..2 LOOP
        IF pass = 2 THEN
            LOCK TABLE product_images IN SHARE MODE;  -- writers wait from here to the commit; readers do not
        END IF;
        DELETE FROM tuned_images_next n WHERE NOT EXISTS (SELECT 1 FROM product_images i WHERE i.id = n.image_id);
        GET DIAGNOSTICS changed = ROW_COUNT;
        caught_up := caught_up + changed;
        INSERT INTO tuned_images_next AS n (image_id, product_id, category, embedding, source_xmin)
        SELECT i.id, i.product_id, i.category, imgsearch_project(i.embedding, space), i.xmin::text::bigint
        FROM product_images i LEFT JOIN tuned_images_next o ON o.image_id = i.id
        WHERE o.image_id IS NULL OR o.source_xmin IS DISTINCT FROM i.xmin::text::bigint
        ON CONFLICT (image_id) DO UPDATE SET product_id = excluded.product_id, category = excluded.category,
            embedding = excluded.embedding, source_xmin = excluded.source_xmin;
        GET DIAGNOSTICS changed = ROW_COUNT;
        caught_up := caught_up + changed;
    END LOOP;
    -- Whoever could read or write tuned_images can do the same with its successor.
    FOR grant_row IN
        SELECT g.grantee, string_agg(g.privilege_type, ', ') AS privileges
        FROM information_schema.role_table_grants g
        WHERE g.table_schema = current_schema() AND g.table_name = 'tuned_images'
          AND g.grantee <> current_user
        GROUP BY g.grantee
    LOOP
        EXECUTE format('GRANT %s ON tuned_images_next TO %I', grant_row.privileges, grant_row.grantee);
    END LOOP;
    LOCK TABLE tuned_images IN ACCESS EXCLUSIVE MODE;
    DROP TABLE tuned_images;
    ALTER TABLE tuned_images_next RENAME TO tuned_images;
    ALTER TABLE tuned_images DROP COLUMN source_xmin;
    ALTER TABLE tuned_images RENAME CONSTRAINT tuned_images_next_pkey TO tuned_images_pkey;
    ALTER INDEX ix_tuned_images_next_product RENAME TO ix_tuned_images_product;
    ALTER INDEX ix_tuned_images_next_embedding RENAME TO ix_tuned_images_embedding;
    FOR twin IN
        SELECT c.relname AS index_name, obj_description(c.oid, 'pg_class') AS category
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'tuned_images'::regclass AND c.relname LIKE 'ix\_tuned\_next\_cat\_%'
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', twin.index_name,
                       imgsearch_tuned_category_index_name(twin.category));
    END LOOP;
    -- Checked for the rows to come at once; imgsearch tune validates the existing ones without blocking anyone.
    ALTER TABLE tuned_images ADD CONSTRAINT tuned_images_image_id_fkey FOREIGN KEY (image_id)
        REFERENCES product_images (id) ON DELETE CASCADE NOT VALID;
    DELETE FROM search_space_rows r USING search_spaces s WHERE r.space_id = s.id AND s.active;
    UPDATE search_spaces s SET active = false, retired_at = now() WHERE s.active;
    UPDATE search_spaces s SET active = true, activated_at = now() WHERE s.id = space;
    RETURN caught_up;
END
$fn$;
