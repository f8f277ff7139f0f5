CASE
  WHEN JSON_TYPE(properties, '/model') = 'VARCHAR'
  THEN JSON_EXTRACT_STRING(properties, '/model')
END NOT LIKE 'a!_%' ESCAPE '!'
