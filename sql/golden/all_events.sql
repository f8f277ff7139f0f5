WITH effective AS (
  WITH reflected AS (
    SELECT
      b.id
    FROM lake.main.backfills AS b
    WHERE
      NOT b.close_version IS NULL AND b.revert_version IS NULL
  ), latest AS (
    SELECT
      s.*
    FROM lake.main.stored_events AS s
    WHERE
      (
        s.backfill_id IS NULL OR s.backfill_id IN (
          SELECT
            id
          FROM reflected
        )
      )
      AND TRUE
      AND TRUE
    QUALIFY
      ROW_NUMBER() OVER (PARTITION BY s.idempotency_key ORDER BY s.version DESC) = 1
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
  FROM latest AS l
  WHERE
    l.kind <> 'tombstone'
    AND NOT EXISTS(
      SELECT
        1
      FROM lake.main.deprecations AS d
      WHERE
        d.backfill_id IN (
          SELECT
            id
          FROM reflected
        )
        AND d.idempotency_key = l.idempotency_key
        AND d.version = l.version
    )
    AND TRUE
)
SELECT
  s.idempotency_key,
  s.event_name,
  s."timestamp",
  s.customer_id,
  s.external_customer_id,
  s.properties,
  s.version,
  s.backfill_id,
  s.kind,
  CASE WHEN s.backfill_id IS NULL THEN 'live' ELSE 'backfill' END AS source,
  NOT e.idempotency_key IS NULL AS effective
FROM lake.main.stored_events AS s
LEFT JOIN effective AS e
  ON e.idempotency_key = s.idempotency_key AND e.version = s.version;
