SELECT
  l.idempotency_key,
  l.event_name,
  l."timestamp",
  l.customer_id,
  l.external_customer_id,
  l.properties,
  l.version,
  l.backfill_id
FROM lake.main.stored_events AS l
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
  l.version = 7
  AND l.backfill_id = 'bf_1'
  AND l."timestamp" >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND l."timestamp" < CAST('2026-11-02 00:00:00' AS TIMESTAMP);
