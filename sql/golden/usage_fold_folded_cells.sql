SELECT
  a.metric_id,
  a.customer_key,
  a.customer_id,
  a.external_customer_id,
  a.bucket,
  a.group_value,
  a.events,
  a.total,
  a.minimum,
  a.maximum
FROM added_cells AS a
ANTI JOIN met_cells AS m
  ON m.metric_id = a.metric_id
  AND m.customer_key = a.customer_key
  AND m.bucket = a.bucket
  AND m.group_value IS NOT DISTINCT FROM a.group_value
UNION ALL
SELECT
  metric_id,
  customer_key,
  ANY_VALUE(customer_id),
  ANY_VALUE(external_customer_id),
  bucket,
  group_value,
  SUM(events),
  SUM(total),
  MIN(minimum),
  MAX(maximum)
FROM (
  SELECT
    *
  FROM met_cells
  UNION ALL
  SELECT
    a.*
  FROM added_cells AS a
  SEMI JOIN met_cells AS m
    ON m.metric_id = a.metric_id
    AND m.customer_key = a.customer_key
    AND m.bucket = a.bucket
    AND m.group_value IS NOT DISTINCT FROM a.group_value
)
GROUP BY
  metric_id,
  customer_key,
  bucket,
  group_value;
