SELECT DISTINCT
  'm_1' AS metric_id,
  CASE
    WHEN NOT e.customer_id IS NULL
    THEN 'id:' || e.customer_id
    ELSE 'ext:' || e.external_customer_id
  END AS customer_key,
  e.customer_id AS customer_id,
  e.external_customer_id AS external_customer_id,
  DATE_TRUNC('HOUR', e.timestamp) AS bucket,
  JSON_EXTRACT_STRING(e.properties, '/region') AS group_value,
  CAST(JSON_EXTRACT(e.properties, '/model') AS TEXT) AS value
FROM unit_events AS e
WHERE
  TRUE AND NOT CAST(JSON_EXTRACT(e.properties, '/model') AS TEXT) IS NULL;
