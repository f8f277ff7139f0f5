CASE
  WHEN JSON_TYPE(properties, '/region') = 'VARCHAR'
  THEN JSON_EXTRACT_STRING(properties, '/region')
END IN ('eu', 'us')
AND NOT CASE CAST(JSON_EXTRACT(properties, '/is_cached') AS TEXT)
  WHEN 'true'
  THEN TRUE
  WHEN 'false'
  THEN FALSE
END
