JSON_EXTRACT(properties, '/model') IS NULL
OR NOT (
  JSON_EXTRACT(properties, '/region') IS NULL
)
