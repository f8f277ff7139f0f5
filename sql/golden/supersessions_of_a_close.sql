WITH newer AS (
  SELECT
    idempotency_key
  FROM staged
)
SELECT
  s.idempotency_key,
  s.version,
  CAST(7 AS BIGINT) AS superseded_by,
  CAST('bf_1' AS TEXT) AS by_backfill_id,
  s.customer_id,
  s.external_customer_id,
  s."timestamp"
FROM lake.main.stored_events AS s
WHERE
  s.idempotency_key IN (
    SELECT
      n.idempotency_key
    FROM newer AS n
  )
  AND s.version < 7
  AND (
    "s"."timestamp" >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    AND "s"."timestamp" < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  );
