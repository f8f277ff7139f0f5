WITH known AS (
  SELECT
    idempotency_key
  FROM lake.main.stored_events
  WHERE
    backfill_id IS NULL
)
SELECT
  i.ordinal,
  i.idempotency_key,
  i.event_name,
  i."timestamp",
  i.customer_id,
  i.external_customer_id,
  CAST(i.properties AS JSON) AS properties,
  EXISTS(
    SELECT
      1
    FROM known AS k
    WHERE
      k.idempotency_key = i.idempotency_key
  ) AS duplicate
FROM incoming AS i
WHERE
  TRUE;
