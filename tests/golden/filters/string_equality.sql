CASE
  WHEN JSON_TYPE(properties, '/region') = 'VARCHAR'
  THEN JSON_EXTRACT_STRING(properties, '/region')
END = 'eu'
