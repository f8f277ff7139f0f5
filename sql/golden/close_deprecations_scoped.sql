SELECT
  'bf_1' AS backfill_id,
  idempotency_key,
  version,
  customer_id,
  external_customer_id,
  "timestamp"
FROM lake.main.stored_events
WHERE
  timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  AND (
    JSON_EXTRACT_STRING(properties, '$.model') = 'gpt-4'
  )
  AND version < 42
  AND (
    customer_id = 'cus_1'
  )
UNION ALL
SELECT
  'bf_1' AS backfill_id,
  idempotency_key,
  version,
  customer_id,
  external_customer_id,
  "timestamp"
FROM lake.main.stored_events
WHERE
  timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  AND (
    JSON_EXTRACT_STRING(properties, '$.model') = 'gpt-4'
  )
  AND version < 42
  AND (
    external_customer_id = 'acme'
  );
