-- Tables of a store (rendered from engine/schema.py; do not edit by hand).

SELECT * FROM DUCKLAKE_SET_OPTION('lake', 'parquet_compression', 'zstd');

SELECT * FROM DUCKLAKE_SET_OPTION('lake', 'parquet_compression_level', '1');

SELECT * FROM DUCKLAKE_SET_OPTION('lake', 'parquet_row_group_size', '16384');

CREATE TABLE IF NOT EXISTS lake.main.stored_events (
  idempotency_key TEXT,
  event_name TEXT,
  timestamp TIMESTAMP,
  customer_id TEXT,
  external_customer_id TEXT,
  properties JSON,
  version BIGINT,
  backfill_id TEXT,
  kind TEXT
);

ALTER TABLE lake.main.stored_events SET PARTITIONED BY (YEAR(timestamp), MONTH(timestamp), DAY(timestamp));

CREATE TABLE IF NOT EXISTS lake.main.staged_events (
  backfill_id TEXT,
  idempotency_key TEXT,
  event_name TEXT,
  timestamp TIMESTAMP,
  customer_id TEXT,
  external_customer_id TEXT,
  properties JSON
);

CREATE TABLE IF NOT EXISTS lake.main.deprecations (
  backfill_id TEXT,
  idempotency_key TEXT,
  version BIGINT,
  customer_id TEXT,
  external_customer_id TEXT,
  timestamp TIMESTAMP
);

ALTER TABLE lake.main.deprecations SET PARTITIONED BY (YEAR(timestamp), MONTH(timestamp), DAY(timestamp));

CREATE TABLE IF NOT EXISTS lake.main.supersessions (
  idempotency_key TEXT,
  version BIGINT,
  superseded_by BIGINT,
  by_backfill_id TEXT,
  customer_id TEXT,
  external_customer_id TEXT,
  timestamp TIMESTAMP
);

CREATE TABLE IF NOT EXISTS lake.main.backfills (
  id TEXT,
  status TEXT,
  created_at TIMESTAMP,
  timeframe_start TIMESTAMP,
  timeframe_end TIMESTAMP,
  events_ingested BIGINT,
  close_time TIMESTAMP,
  reverted_at TIMESTAMP,
  customer_id TEXT,
  external_customer_id TEXT,
  replace_existing_events BOOLEAN,
  deprecation_filter TEXT,
  sequence BIGINT,
  close_version BIGINT,
  revert_version BIGINT
);

CREATE TABLE IF NOT EXISTS lake.main.customers (
  id TEXT,
  external_customer_id TEXT,
  name TEXT,
  email TEXT,
  created_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS lake.main.commits (
  version BIGINT,
  operation TEXT,
  backfill_id TEXT,
  committed_at TIMESTAMP,
  events_written BIGINT
);

CREATE TABLE IF NOT EXISTS lake.main.metrics (
  id TEXT,
  name TEXT,
  sql TEXT,
  description TEXT,
  metadata JSON,
  status TEXT,
  created_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS lake.main.usage_cells (
  metric_id TEXT,
  customer_key TEXT,
  customer_id TEXT,
  external_customer_id TEXT,
  bucket TIMESTAMP,
  group_value TEXT,
  events BIGINT,
  total DOUBLE,
  minimum DOUBLE,
  maximum DOUBLE
);

ALTER TABLE lake.main.usage_cells SET PARTITIONED BY (YEAR(bucket), MONTH(bucket), DAY(bucket));

CREATE TABLE IF NOT EXISTS lake.main.usage_distinct (
  metric_id TEXT,
  customer_key TEXT,
  customer_id TEXT,
  external_customer_id TEXT,
  bucket TIMESTAMP,
  group_value TEXT,
  value TEXT
);

ALTER TABLE lake.main.usage_distinct SET PARTITIONED BY (YEAR(bucket), MONTH(bucket), DAY(bucket));
