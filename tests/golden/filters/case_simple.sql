CASE CASE
    WHEN JSON_TYPE(properties, '/region') = 'VARCHAR'
    THEN JSON_EXTRACT_STRING(properties, '/region')
  END
  WHEN 'eu'
  THEN 1
  ELSE 0
END = 1
