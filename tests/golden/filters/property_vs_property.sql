COALESCE(
  TRY_CAST(CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT) AS DOUBLE) = TRY_CAST(CAST(JSON_EXTRACT(properties, '/other_tokens') AS TEXT) AS DOUBLE),
  CASE
    WHEN JSON_TYPE(properties, '/tokens') = 'VARCHAR'
    THEN JSON_EXTRACT_STRING(properties, '/tokens')
  END = CASE
    WHEN JSON_TYPE(properties, '/other_tokens') = 'VARCHAR'
    THEN JSON_EXTRACT_STRING(properties, '/other_tokens')
  END,
  CASE CAST(JSON_EXTRACT(properties, '/tokens') AS TEXT)
    WHEN 'true'
    THEN TRUE
    WHEN 'false'
    THEN FALSE
  END = CASE CAST(JSON_EXTRACT(properties, '/other_tokens') AS TEXT)
    WHEN 'true'
    THEN TRUE
    WHEN 'false'
    THEN FALSE
  END
)
