WITH promoted AS (
  SELECT
    customer_id,
    external_customer_id,
    "timestamp"
  FROM lake.main.stored_events
  WHERE
    version = 7 AND backfill_id = 'bf_1'
)
SELECT
  customer_id,
  external_customer_id,
  "timestamp"
FROM promoted
UNION ALL
SELECT
  customer_id,
  external_customer_id,
  "timestamp"
FROM lake.main.supersessions
WHERE
  by_backfill_id = 'bf_1'
UNION ALL
SELECT
  customer_id,
  external_customer_id,
  "timestamp"
FROM lake.main.deprecations
WHERE
  backfill_id = 'bf_1'
  AND "timestamp" >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND "timestamp" < CAST('2026-11-02 00:00:00' AS TIMESTAMP);
