-- PostgreSQL 17 and newer: lets the writer refresh the planner's statistics after a bulk load (ANALYZE).
GRANT MAINTAIN ON ALL TABLES IN SCHEMA {schema} TO {role};
REVOKE MAINTAIN ON {schema}.alembic_version FROM {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT MAINTAIN ON TABLES TO {role};
