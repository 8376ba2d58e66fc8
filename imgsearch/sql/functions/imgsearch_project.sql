-- A raw vector in a tuned search space: the map's rows applied by inner products, the space's shift
-- subtracted, scaled to length 1. Searches project their queries with it, so a backend that passes a raw VGG16
-- vector to imgsearch_similar gets what the Python API gets.
CREATE OR REPLACE FUNCTION imgsearch_project(raw vector, space integer) RETURNS vector
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    mapped vector;
    shift_vector vector;
BEGIN
    SELECT array_agg(inner_product(r.direction, raw) ORDER BY r.position)::vector INTO mapped
    FROM search_space_rows r WHERE r.space_id = space;
    IF mapped IS NULL THEN
        RAISE EXCEPTION 'imgsearch: search space % has no map', space USING ERRCODE = '55000';
    END IF;
    SELECT s.shift INTO shift_vector FROM search_spaces s WHERE s.id = space;
    IF shift_vector IS NOT NULL THEN
        mapped := mapped - shift_vector;
    END IF;
    RETURN l2_normalize(mapped);
END
$fn$;
