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
SEMI JOIN (
  SELECT DISTINCT
    __customer_key,
    __bucket
  FROM added_events
) AS u
  ON t.customer_key = u.__customer_key AND t.bucket = u.__bucket
WHERE
  t.bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND t.bucket <= CAST('2026-11-02 00:00:00' AS TIMESTAMP);
