SELECT
  *
FROM affected_units
WHERE
  COALESCE(
    bucket >= CAST('2026-11-01 00:00:00' AS TIMESTAMP)
    AND bucket <= CAST('2026-11-01 23:00:00' AS TIMESTAMP)
    AND customer_key IN ('ext:acme', 'id:cus_1'),
    FALSE
  );
