-- PostgreSQL 17 and newer: the counterpart of grant_writer_maintain.
REVOKE MAINTAIN ON ALL TABLES IN SCHEMA {schema} FROM {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE MAINTAIN ON TABLES FROM {role};
