DELETE FROM lake.main.usage_cells AS t USING   met_cells AS m
WHERE
  t.bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
  AND t.bucket <= CAST('2026-11-02 00:00:00' AS TIMESTAMP)
  AND t.metric_id = m.metric_id
  AND t.customer_key = m.customer_key
  AND t.bucket = m.bucket
  AND t.group_value IS NOT DISTINCT FROM m.group_value;
