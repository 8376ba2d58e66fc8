-- Undoes upgrade_api_keys.sql: every API key is dropped (the service is open again on loopback).
DROP TABLE IF EXISTS api_keys;
