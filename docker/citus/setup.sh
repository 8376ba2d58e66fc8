#!/bin/bash
# The citus-setup service of docker-compose.yml (profile "citus"). Compose starts it once the coordinator and the
# workers are healthy; running it again changes nothing.
#
# On every node: the citus and vector extensions, and the password that node's Citus gives when it connects to
# another node as this role (pg_dist_authinfo: nodeid 0 means any node; Citus does not copy this table between
# nodes, so each node gets its own row). The nodes accept connections from other hosts only with the password
# (POSTGRES_HOST_AUTH_METHOD=scram-sha-256), and Citus encrypts them (citus.node_conninfo defaults to
# sslmode=require, with the self-signed certificate Citus makes when its extension is created).
# On the coordinator: the address the workers reach it at (citus_set_coordinator_host) and the workers
# (citus_add_node, which syncs Citus's metadata to them). Both calls keep an existing entry.
# Then it checks that every node reaches every other one, and that no node lets this container in without the
# password.
set -euo pipefail

: "${PGPASSWORD:?set PGPASSWORD to the POSTGRES_PASSWORD of the nodes}"
export PGUSER="${PGUSER:-imgsearch}" PGDATABASE="${PGDATABASE:-imgsearch}" PGCONNECT_TIMEOUT=10
coordinator="${CITUS_COORDINATOR:-citus-coordinator}"
read -r -a workers <<<"${CITUS_WORKERS:-citus-worker-1 citus-worker-2}"
nodes=("$coordinator" "${workers[@]}")

# sql HOST [psql options]: runs standard input on HOST and stops at the first error.
sql() {
    local host="$1"
    shift
    psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 --host "$host" --port 5432 "$@"
}

for node in "${nodes[@]}"; do
    for _ in $(seq 60); do
        pg_isready --quiet --host "$node" --port 5432 && break
        sleep 2
    done
    sql "$node" <<'SQL'
CREATE EXTENSION IF NOT EXISTS citus;
CREATE EXTENSION IF NOT EXISTS vector;
\getenv password PGPASSWORD
BEGIN;
DELETE FROM pg_dist_authinfo WHERE nodeid = 0 AND rolename = current_user;
-- libpq's quoting: the value between single quotes, with \ and ' escaped by a backslash.
INSERT INTO pg_dist_authinfo (nodeid, rolename, authinfo)
VALUES (0, current_user, format('password=''%s''', replace(replace(:'password', '\', '\\'), '''', '\''')));
COMMIT;
SQL
done

sql "$coordinator" --set coordinator="$coordinator" --set workers="${workers[*]}" <<'SQL'
SELECT citus_set_coordinator_host(:'coordinator', 5432);
SELECT format('SELECT citus_add_node(%L, 5432)', worker) FROM unnest(string_to_array(:'workers', ' ')) AS worker
\gexec
SQL

for node in "${nodes[@]}"; do
    sql "$node" <<'SQL'
DO $$
DECLARE
    failures text;
BEGIN
    SELECT string_agg(format('node %s: %s', nodeid, result), '; ') INTO failures
    FROM run_command_on_all_nodes('SELECT 1') WHERE NOT success;
    IF failures IS NOT NULL THEN
        RAISE EXCEPTION 'citus-setup: this node cannot reach every node: %', failures;
    END IF;
END
$$;
SQL
    if env -u PGPASSWORD PGPASSFILE=/dev/null psql --no-psqlrc --no-password --host "$node" --port 5432 \
        --command 'SELECT 1' >/dev/null 2>&1; then
        echo "citus-setup: $node accepts a connection without the password" >&2
        exit 1
    fi
done

sql "$coordinator" --tuples-only --no-align \
    --command "SELECT 'citus-setup: cluster ready, workers: ' || string_agg(node_name, ', ' ORDER BY node_name)
               FROM citus_get_active_worker_nodes()"
