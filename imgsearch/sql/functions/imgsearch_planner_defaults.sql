-- Puts back the planner's default join and sort methods for the rest of a function whose SET clauses ruled them
-- out for its own statements (imgsearch_similar's short way), before it hands over to a function that plans
-- for itself (imgsearch_similar_multi). The SET clauses still restore the caller's values on return.
CREATE OR REPLACE FUNCTION imgsearch_planner_defaults() RETURNS void
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT set_config('enable_sort', 'on', true), set_config('enable_hashjoin', 'on', true),
           set_config('enable_mergejoin', 'on', true);
$fn$;
