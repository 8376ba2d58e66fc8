-- A search's attribute filters, a JSON object, as the jsonpath predicate a product's attributes must match
-- (p.attributes @@ imgsearch_attribute_filter(filters)). NULL, JSON null or {} filter nothing (NULL). Every key is an
-- attribute and every one must hold:
--   "brand": "Acme"                  equal (an attribute holding a list of text: one of its items is equal)
--   "brand": ["Acme", "Zenith"]      any of (1 to 100 values)
--   "rating": {">=": 4, "<": 5}      numeric range: any of ">=", "<=", ">", "<" (numbers; an attribute holding
--                                    a number, a numeric text or a list of them: one of its items is in range)
--   "size": {"has": true}            has the attribute at all (false: has not); combines with a range
-- A value compares as what it means, not as how it was typed: "42" matches the number 42 and 42 the text "42";
-- "true" and "false" match booleans (a CSV feed's cells, a URL's query and a JSON body all say the same thing).
-- Names and values are written into the path as JSON string literals (to_jsonb(...)::text), never spliced in as
-- they come, so no filter can say more than its conditions. Bad filters raise SQLSTATE 22023 with one line.
CREATE OR REPLACE FUNCTION imgsearch_attribute_filter(filters jsonb) RETURNS jsonpath
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    attribute text;
    condition jsonb;
    member text;
    operator text;
    bound jsonb;
    item jsonb;
    conditions text[] := '{}';
    alternatives text[];
    ranges text[];
    number_text text := '^-?(0|[1-9][0-9]*)(\.[0-9]+)?$';
BEGIN
    IF filters IS NULL OR filters = '{}'::jsonb OR filters = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(filters) <> 'object' THEN
        RAISE EXCEPTION 'imgsearch: filters must be a JSON object of attribute names and conditions, got a %',
            jsonb_typeof(filters) USING ERRCODE = '22023';
    END IF;
    IF (SELECT count(*) FROM jsonb_object_keys(filters)) > 32 THEN
        RAISE EXCEPTION 'imgsearch: at most 32 attribute filters in one search' USING ERRCODE = '22023';
    END IF;
    FOR attribute, condition IN SELECT e.key, e.value FROM jsonb_each(filters) e ORDER BY e.key LOOP
        IF length(attribute) NOT BETWEEN 1 AND 64 OR btrim(attribute) = '' OR attribute ~ '[[:cntrl:]]' THEN
            RAISE EXCEPTION 'imgsearch: an attribute name must be 1 to 64 characters without control characters, got %',
                left(to_jsonb(attribute)::text, 70) USING ERRCODE = '22023';
        END IF;
        member := '$.' || to_jsonb(attribute)::text;
        alternatives := '{}';
        ranges := '{}';
        IF jsonb_typeof(condition) = 'object' THEN
            IF condition = '{}'::jsonb THEN
                RAISE EXCEPTION 'imgsearch: the condition on % is empty', to_jsonb(attribute)::text
                    USING ERRCODE = '22023';
            END IF;
            FOR operator, bound IN SELECT e.key, e.value FROM jsonb_each(condition) e ORDER BY e.key LOOP
                IF operator = 'has' THEN
                    IF jsonb_typeof(bound) <> 'boolean' THEN
                        RAISE EXCEPTION 'imgsearch: "has" on % takes true or false', to_jsonb(attribute)::text
                            USING ERRCODE = '22023';
                    END IF;
                    alternatives := alternatives || CASE WHEN bound = 'true' THEN format('exists (%s)', member)
                                                         ELSE format('!(exists (%s))', member) END;
                ELSIF operator IN ('>=', '<=', '>', '<') THEN
                    IF jsonb_typeof(bound) = 'string' AND length(bound #>> '{}') <= 40
                       AND bound #>> '{}' ~ number_text THEN
                        bound := to_jsonb((bound #>> '{}')::numeric);
                    END IF;
                    IF jsonb_typeof(bound) <> 'number' THEN
                        RAISE EXCEPTION 'imgsearch: % on % takes a number, got %', operator, to_jsonb(attribute)::text,
                            left(bound::text, 40) USING ERRCODE = '22023';
                    END IF;
                    ranges := ranges || format('@ %s %s', operator, bound::text);
                ELSE
                    RAISE EXCEPTION 'imgsearch: unknown condition % on % (use >=, <=, >, < or has)',
                        left(to_jsonb(operator)::text, 40), to_jsonb(attribute)::text USING ERRCODE = '22023';
                END IF;
            END LOOP;
            -- One value (or list item) within every bound; .double() reads numeric text as the number it says (its
            -- errors, on other text, are suppressed by @@).
            IF cardinality(ranges) > 0 THEN
                alternatives := alternatives || format('exists (%s.double() ? (%s))', member,
                                                       array_to_string(ranges, ' && '));
            END IF;
            conditions := conditions || array_to_string(alternatives, ' && ');
            CONTINUE;
        END IF;
        IF jsonb_typeof(condition) = 'array' THEN
            IF jsonb_array_length(condition) NOT BETWEEN 1 AND 100 THEN
                RAISE EXCEPTION 'imgsearch: a list of values for % must hold 1 to 100 of them',
                    to_jsonb(attribute)::text USING ERRCODE = '22023';
            END IF;
        ELSE
            condition := jsonb_build_array(condition);
        END IF;
        FOR item IN SELECT e FROM jsonb_array_elements(condition) e LOOP
            IF jsonb_typeof(item) NOT IN ('string', 'number', 'boolean') THEN
                RAISE EXCEPTION 'imgsearch: a value for % must be text, a number or true/false, got %',
                    to_jsonb(attribute)::text, left(item::text, 40) USING ERRCODE = '22023';
            END IF;
            IF length(item #>> '{}') > 1000 THEN
                RAISE EXCEPTION 'imgsearch: a value for % is longer than 1000 characters', to_jsonb(attribute)::text
                    USING ERRCODE = '22023';
            END IF;
            alternatives := alternatives || format('%s == %s', member, item::text);
            -- The same value in its other spellings.
            IF jsonb_typeof(item) = 'string' AND length(item #>> '{}') <= 40 AND item #>> '{}' ~ number_text THEN
                alternatives := alternatives || format('%s == %s', member, (item #>> '{}')::numeric);
            ELSIF jsonb_typeof(item) = 'string' AND lower(item #>> '{}') IN ('true', 'false') THEN
                alternatives := alternatives || format('%s == %s', member, lower(item #>> '{}'));
            ELSIF jsonb_typeof(item) IN ('number', 'boolean') THEN
                alternatives := alternatives || format('%s == %s', member, to_jsonb(item #>> '{}')::text);
            END IF;
        END LOOP;
        conditions := conditions || ('(' || array_to_string(alternatives, ' || ') || ')');
    END LOOP;
    RETURN ('(' || array_to_string(conditions, ') && (') || ')')::jsonpath;
END
$fn$;
