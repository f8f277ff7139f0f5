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
  SELECT
    *
  FROM slice_rows
) AS e;
