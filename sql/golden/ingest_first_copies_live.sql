WITH known AS (
  SELECT
    idempotency_key,
    BOOL_OR(CAST(backfill_id IS NULL AS BOOLEAN)) AS duplicate
  FROM lake.main.stored_events
  WHERE
    idempotency_key IN (
      SELECT
        i.idempotency_key
      FROM incoming AS i
    )
    AND (
      "timestamp" >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
      AND "timestamp" < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
    )
  GROUP BY
    idempotency_key
)
SELECT
  i.ordinal,
  i.idempotency_key,
  i.event_name,
  i."timestamp",
  i.customer_id,
  i.external_customer_id,
  CAST(i.properties AS JSON) AS properties,
  COALESCE(k.duplicate, FALSE) AS duplicate,
  NOT k.idempotency_key IS NULL AS stored_before
FROM incoming AS i
LEFT JOIN known AS k
  ON k.idempotency_key = i.idempotency_key
WHERE
  TRUE;
