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
    *
  FROM added_cells
)
GROUP BY
  metric_id,
  customer_key,
  bucket,
  group_value;
