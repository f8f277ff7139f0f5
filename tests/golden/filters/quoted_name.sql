CASE
  WHEN JSON_TYPE(properties, '/weird name') = 'VARCHAR'
  THEN JSON_EXTRACT_STRING(properties, '/weird name')
END = 'x'
