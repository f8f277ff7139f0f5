WITH promoted AS (
  SELECT
    *
  FROM promoted_rows
)
SELECT
  l.idempotency_key,
  l.event_name,
  l."timestamp",
  l.customer_id,
  l.external_customer_id,
  l.properties,
  l.version,
  l.backfill_id
FROM promoted AS l
SEMI JOIN replaced_units AS u
  ON (
    u.customer_key = CASE
      WHEN NOT l.customer_id IS NULL
      THEN 'id:' || l.customer_id
      ELSE 'ext:' || l.external_customer_id
    END
  )
  AND (
    u.bucket = DATE_TRUNC('HOUR', l.timestamp)
  )
WHERE
  l."timestamp" >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND l."timestamp" < CAST('2026-11-02 00:00:00' AS TIMESTAMP);
