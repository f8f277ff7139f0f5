TRY_CAST(CAST(JSON_EXTRACT(properties, '/my_numeric_property') AS TEXT) AS DOUBLE) > 100
AND CASE
  WHEN JSON_TYPE(properties, '/my_other_property') = 'VARCHAR'
  THEN JSON_EXTRACT_STRING(properties, '/my_other_property')
END = 'bar'
