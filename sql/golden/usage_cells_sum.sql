SELECT
  'm_1' AS metric_id,
  CASE
    WHEN NOT e.customer_id IS NULL
    THEN 'id:' || e.customer_id
    ELSE 'ext:' || e.external_customer_id
  END AS customer_key,
  ANY_VALUE(e.customer_id) AS customer_id,
  ANY_VALUE(e.external_customer_id) AS external_customer_id,
  DATE_TRUNC('HOUR', e.timestamp) AS bucket,
  CAST(NULL AS TEXT) AS group_value,
  COUNT(TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE)) AS events,
  SUM(TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE)) AS total,
  MIN(TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE)) AS minimum,
  MAX(TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE)) AS maximum
FROM unit_events AS e
WHERE
  e.event_name = 'completion'
GROUP BY
  CASE
    WHEN NOT e.customer_id IS NULL
    THEN 'id:' || e.customer_id
    ELSE 'ext:' || e.external_customer_id
  END,
  DATE_TRUNC('HOUR', e.timestamp),
  CAST(NULL AS TEXT)
HAVING
  COUNT(TRY_CAST(CAST(JSON_EXTRACT(e.properties, '/tokens') AS TEXT) AS DOUBLE)) > 0;
