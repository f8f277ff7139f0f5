SELECT
  metric_id,
  customer_key,
  ANY_VALUE(customer_id) AS customer_id,
  ANY_VALUE(external_customer_id) AS external_customer_id,
  bucket,
  group_value,
  SUM(events) AS events,
  SUM(total) AS total,
  MIN(minimum) AS minimum,
  MAX(maximum) AS maximum
FROM (
  SELECT
    t.metric_id,
    t.customer_key,
    t.customer_id,
    t.external_customer_id,
    t.bucket,
    t.group_value,
    t.events,
    t.total,
    t.minimum,
    t.maximum
  FROM lake.main.usage_cells AS t
  SEMI JOIN added_cells AS a
    ON t.metric_id = a.metric_id
    AND t.customer_key = a.customer_key
    AND t.bucket = a.bucket
    AND t.group_value IS NOT DISTINCT FROM a.group_value
  WHERE
    t.bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    AND t.bucket <= CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  UNION ALL
  SELECT
    metric_id,
    customer_key,
    customer_id,
    external_customer_id,
    bucket,
    group_value,
    events,
    total,
    minimum,
    maximum
  FROM added_cells
)
GROUP BY
  metric_id,
  customer_key,
  bucket,
  group_value;
