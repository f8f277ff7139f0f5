CASE
  WHEN TRY_CAST(CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT) AS DOUBLE) > 100
  THEN 'big'
  ELSE 'small'
END = 'big'
