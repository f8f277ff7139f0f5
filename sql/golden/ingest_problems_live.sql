WITH checked AS (
  SELECT
    i.ordinal,
    i.idempotency_key,
    [
      CASE
        WHEN i.idempotency_key IS NULL OR i.idempotency_key = ''
        THEN 'idempotency_key is required'
      END,
      CASE
        WHEN i.event_name IS NULL OR i.event_name = ''
        THEN 'event_name is required'
      END,
      CASE
        WHEN LENGTH(i.unknown_fields) > 0
        THEN 'unknown field ' || ARRAY_TO_STRING(LIST_TRANSFORM(i.unknown_fields, LAMBDA f : '''' || f || ''''), ', ')
      END,
      CASE
        WHEN NOT i.timestamp_given
        THEN 'timestamp is required'
        WHEN i."timestamp" IS NULL
        THEN 'timestamp ''' || COALESCE(i.timestamp_text, '?') || ''' is not an ISO-8601 time in UTC (for example 2020-12-09T16:09:53Z)'
      END,
      CASE
        WHEN NOT i.customer_id IS NULL AND NOT i.external_customer_id IS NULL
        THEN 'give exactly one of customer_id and external_customer_id, not both'
        WHEN i.customer_id IS NULL AND i.external_customer_id IS NULL
        THEN 'one of customer_id and external_customer_id is required'
      END,
      CASE
        WHEN NOT i.customer_id IS NULL AND c.id IS NULL
        THEN 'customer_id ''' || i.customer_id || ''' does not exist'
      END,
      CASE
        WHEN i.properties IS NULL
        THEN 'properties is required'
        WHEN COALESCE(TRY(JSON_TYPE(i.properties)), '') <> 'OBJECT'
        THEN 'properties must be a JSON object of string, number or boolean values'
      END,
      CASE
        WHEN TRUE AND i."timestamp" < CAST('2026-11-01 00:00:00' AS TIMESTAMP)
        THEN 'timestamp ' || STRFTIME(i."timestamp", '%Y-%m-%dT%H:%M:%S.%fZ') || ' is older than the grace period (' || '12 h' || '); ' || 'use a backfill to ingest past events'
      END,
      CASE
        WHEN TRUE AND i."timestamp" > CAST('2026-11-02 00:00:00' AS TIMESTAMP)
        THEN 'timestamp ' || STRFTIME(i."timestamp", '%Y-%m-%dT%H:%M:%S.%fZ') || ' is too far in the future (at most ' || '5 min' || ' ahead)'
      END,
      CASE
        WHEN NOT TRUE AND (
          i."timestamp" < NULL OR i."timestamp" >= NULL
        )
        THEN 'timestamp ' || STRFTIME(i."timestamp", '%Y-%m-%dT%H:%M:%S.%fZ') || ' is outside the backfill timeframe [' || '' || ')'
      END,
      CASE
        WHEN NOT TRUE AND FALSE AND NOT COALESCE(NULL, FALSE)
        THEN 'event does not belong to the backfill''s customer'
      END
    ] AS problems
  FROM incoming AS i
  LEFT JOIN lake.main.customers AS c
    ON c.id = i.customer_id
  WHERE
    (
      i.idempotency_key IS NULL OR i.idempotency_key = ''
    )
    OR (
      i.event_name IS NULL OR i.event_name = ''
    )
    OR LENGTH(i.unknown_fields) > 0
    OR NOT i.timestamp_given
    OR i."timestamp" IS NULL
    OR (
      NOT i.customer_id IS NULL AND NOT i.external_customer_id IS NULL
    )
    OR (
      i.customer_id IS NULL AND i.external_customer_id IS NULL
    )
    OR (
      NOT i.customer_id IS NULL AND c.id IS NULL
    )
    OR i.properties IS NULL
    OR COALESCE(TRY(JSON_TYPE(i.properties)), '') <> 'OBJECT'
    OR (
      TRUE AND i."timestamp" < CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    )
    OR (
      TRUE AND i."timestamp" > CAST('2026-11-02 00:00:00' AS TIMESTAMP)
    )
    OR (
      NOT TRUE AND (
        i."timestamp" < NULL OR i."timestamp" >= NULL
      )
    )
    OR (
      NOT TRUE AND FALSE AND NOT COALESCE(NULL, FALSE)
    )
), property_problems AS (
  SELECT
    i.ordinal,
    i.idempotency_key,
    CASE
      WHEN p.type IN ('OBJECT', 'ARRAY')
      THEN 'property ''' || p.key || ''' must be a string, number or boolean (no nesting)'
      WHEN p.type = 'NULL'
      THEN 'property ''' || p.key || ''' is null; leave it out instead'
      WHEN p.type = 'DOUBLE' AND REGEXP_FULL_MATCH(CAST(p.atom AS TEXT), '-?[0-9]+')
      THEN 'property ''' || p.key || ''' is an integer outside the int64 range'
      WHEN p.type = 'UBIGINT' AND TRY_CAST(p.atom AS UBIGINT) > 9223372036854775807
      THEN 'property ''' || p.key || ''' is an integer outside the int64 range'
      WHEN p.type = 'DOUBLE' AND NOT ISFINITE(TRY_CAST(CAST(p.atom AS TEXT) AS DOUBLE))
      THEN 'property ''' || p.key || ''' must be a finite number'
    END AS problem
  FROM (
    SELECT
      *
    FROM incoming
    WHERE
      REGEXP_MATCHES(properties, '\{.*\{|\[|null|NaN|Infinity|[0-9]{16}|[0-9.][eE]')
      AND JSON_VALID(properties)
      AND JSON_TYPE(properties) = 'OBJECT'
  ) AS i, JSON_EACH(i.properties) AS p
), conflicting_keys AS (
  SELECT
    r.idempotency_key,
    ANY_VALUE(r.copies) AS copies
  FROM incoming AS i
  JOIN repeated_keys AS r
    USING (idempotency_key)
  GROUP BY
    r.idempotency_key
  HAVING
    COUNT(
      DISTINCT (i.event_name, i."timestamp", i.customer_id, i.external_customer_id, i.properties)
    ) > 1
)
SELECT
  ordinal,
  idempotency_key,
  problem
FROM (
  SELECT
    ordinal,
    idempotency_key,
    UNNEST(LIST_FILTER(problems, LAMBDA x : NOT x IS NULL)) AS problem
  FROM checked
  UNION ALL
  SELECT
    ordinal,
    idempotency_key,
    problem
  FROM property_problems
  WHERE
    NOT problem IS NULL
  UNION ALL
  SELECT
    MIN(i.ordinal),
    i.idempotency_key,
    'idempotency_key appears ' || ANY_VALUE(k.copies) || ' times in this batch with different bodies'
  FROM incoming AS i
  JOIN conflicting_keys AS k
    USING (idempotency_key)
  GROUP BY
    i.idempotency_key
)
ORDER BY
  ordinal,
  problem;
