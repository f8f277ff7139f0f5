DELETE FROM lake.main.usage_cells AS t USING   added_cells AS a
WHERE
  t.bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND t.bucket <= CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  AND t.metric_id = a.metric_id
  AND t.customer_key = a.customer_key
  AND t.bucket = a.bucket
  AND t.group_value IS NOT DISTINCT FROM a.group_value;
