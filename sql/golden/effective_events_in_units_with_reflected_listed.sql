WITH reflected AS (
  SELECT
    r.id
  FROM (VALUES
    ('bf_1'),
    ('bf_2')) AS r(id)
), counted_supersessions AS (
  SELECT
    s.idempotency_key,
    s.version
  FROM lake.main.supersessions AS s
  WHERE
    (
      s.by_backfill_id IS NULL
      OR s.by_backfill_id IN (
        SELECT
          r.id
        FROM reflected AS r
      )
    )
    AND (
      s.timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
      AND s.timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
    )
), counted_deprecations AS (
  SELECT
    d.idempotency_key,
    d.version
  FROM lake.main.deprecations AS d
  WHERE
    d.backfill_id IN (
      SELECT
        r.id
      FROM reflected AS r
    )
    AND (
      d.timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
      AND d.timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
    )
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
FROM lake.main.stored_events AS l
ANTI JOIN counted_supersessions AS s
  ON s.idempotency_key = l.idempotency_key AND s.version = l.version
ANTI JOIN counted_deprecations AS d
  ON d.idempotency_key = l.idempotency_key AND d.version = l.version
SEMI JOIN affected_units AS u
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
  (
    l.backfill_id IS NULL
    OR l.backfill_id IN (
      SELECT
        r.id
      FROM reflected AS r
    )
  )
  AND l.kind <> 'tombstone'
  AND (
    l.timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    AND l.timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  );
