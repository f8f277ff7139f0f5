WITH reflected AS (
  SELECT
    b.id
  FROM lake.main.backfills AS b
  WHERE
    b.close_version <= 7 AND (
      b.revert_version IS NULL OR b.revert_version > 7
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
    AND EXISTS(
      SELECT
        1
      FROM affected_units AS u
      WHERE
        (
          u.customer_key = CASE
            WHEN NOT l.customer_id IS NULL
            THEN 'id:' || l.customer_id
            ELSE 'ext:' || l.external_customer_id
          END
        )
        AND (
          u.bucket = DATE_TRUNC('HOUR', l.timestamp)
        )
    )
    AND l.version <= 7
  )
  AND NOT EXISTS(
    SELECT
      1
    FROM lake.main.supersessions AS s
    WHERE
      s.idempotency_key = l.idempotency_key
      AND s.version = l.version
      AND (
        s.by_backfill_id IS NULL
        OR s.by_backfill_id IN (
          SELECT
            r.id
          FROM reflected AS r
        )
      )
      AND (
        s.superseded_by <= 7
      )
  )
  AND NOT EXISTS(
    SELECT
      1
    FROM lake.main.deprecations AS d
    WHERE
      d.idempotency_key = l.idempotency_key
      AND d.version = l.version
      AND d.backfill_id IN (
        SELECT
          r.id
        FROM reflected AS r
      )
      AND (
        d.timestamp >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
        AND d.timestamp < CAST('2026-11-02 00:00:00' AS TIMESTAMP)
      )
  );
