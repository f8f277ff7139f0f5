WITH cells AS (
  SELECT
    *
  FROM cached_cells
), known_customers AS (
  SELECT
    *
  FROM cached_customers
)
SELECT
  COALESCE(c.customer_id, by_external.id) AS customer_id,
  COALESCE(c.external_customer_id, by_id.external_customer_id) AS external_customer_id,
  GREATEST(DATE_TRUNC('DAY', c.bucket), $timeframe_start) AS timeframe_start,
  LEAST(DATE_TRUNC('DAY', c.bucket) + INTERVAL '1' DAY, $timeframe_end) AS timeframe_end,
  c.group_value AS group_value,
  CAST(SUM(c.total) AS DOUBLE) AS value
FROM cells AS c
LEFT JOIN known_customers AS by_id
  ON by_id.id = c.customer_id
LEFT JOIN known_customers AS by_external
  ON by_external.external_customer_id = c.external_customer_id
WHERE
  c.metric_id = $metric_id
  AND c.bucket >= $hour_start
  AND c.bucket < $timeframe_end
  AND (
    COALESCE(c.external_customer_id, by_id.external_customer_id) = $external_customer_id
  )
GROUP BY
  1,
  2,
  3,
  4,
  5
ORDER BY
  1,
  2,
  3,
  5;
