(
  TRY_CAST(CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT) AS DOUBLE) % CAST(3 AS DOUBLE)
) = 1
OR (
  TRY_CAST(CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT) AS DOUBLE) / NULLIF(TRY_CAST(CAST(JSON_EXTRACT(properties, '/cost') AS TEXT) AS DOUBLE), 0)
) > 4
