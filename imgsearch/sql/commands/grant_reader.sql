-- What a website backend needs to search: reach the schema and read the catalogue (the search functions are
-- SECURITY INVOKER and executable by anyone who can reach the schema). Default privileges extend the same to
-- tables that later revisions create, when the role that runs the migrations runs this too.
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role};
