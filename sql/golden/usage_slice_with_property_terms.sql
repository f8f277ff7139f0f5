SELECT
  "e"."customer_id",
  "e"."external_customer_id",
  "e"."event_name",
  CASE
    WHEN NOT e.customer_id IS NULL
    THEN 'id:' || e.customer_id
    ELSE 'ext:' || e.external_customer_id
  END AS __customer_key,
  DATE_TRUNC('HOUR', e.timestamp) AS __bucket,
  TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE) AS __property_term_0,
  CAST(JSON_EXTRACT(e.properties, '/model') AS TEXT) AS __property_term_1,
  JSON_EXTRACT_STRING(e.properties, '/region') AS __property_term_2
FROM (
  WITH reflected AS (
    SELECT
      b.id
    FROM lake.main.backfills AS b
    WHERE
      NOT b.close_version IS NULL AND b.revert_version IS NULL
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
      AND TRUE
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
      ) AND TRUE
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
    AND TRUE
) AS e;
