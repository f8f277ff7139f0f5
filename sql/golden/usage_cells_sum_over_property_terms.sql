SELECT
  'm_1' AS metric_id,
  e.__customer_key AS customer_key,
  ANY_VALUE(e.customer_id) AS customer_id,
  ANY_VALUE(e.external_customer_id) AS external_customer_id,
  e.__bucket AS bucket,
  CAST(NULL AS TEXT) AS group_value,
  COUNT(e.__property_term_0) AS events,
  SUM(e.__property_term_0) AS total,
  MIN(e.__property_term_0) AS minimum,
  MAX(e.__property_term_0) AS maximum
FROM slice_events AS e
WHERE
  e.event_name = 'completion'
GROUP BY
  e.__customer_key,
  e.__bucket,
  CAST(NULL AS TEXT)
HAVING
  COUNT(e.__property_term_0) > 0;
