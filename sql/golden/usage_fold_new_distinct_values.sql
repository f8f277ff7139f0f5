SELECT
  n.metric_id,
  n.customer_key,
  n.customer_id,
  n.external_customer_id,
  n.bucket,
  n.group_value,
  n.value
FROM added_distinct AS n
ANTI JOIN (
  SELECT
    *
  FROM lake.main.usage_distinct
  WHERE
    bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    AND bucket <= CAST('2026-11-02 00:00:00' AS TIMESTAMP)
) AS o
  ON o.metric_id = n.metric_id
  AND o.customer_key = n.customer_key
  AND o.bucket = n.bucket
  AND o.group_value IS NOT DISTINCT FROM n.group_value
  AND o.value = n.value;
