SELECT
  'bf_2' AS backfill_id,
  idempotency_key,
  version,
  customer_id,
  external_customer_id,
  "timestamp"
FROM lake.main.stored_events
WHERE
  timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  AND version < 42;
