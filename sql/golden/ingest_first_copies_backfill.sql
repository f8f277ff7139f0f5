WITH known AS (
  SELECT DISTINCT
    idempotency_key,
    TRUE AS duplicate
  FROM lake.main.staged_events
  WHERE
    backfill_id = 'bf_1'
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
  i.ordinal IN (
    SELECT
      MIN(ordinal)
    FROM incoming
    GROUP BY
      idempotency_key
  );
