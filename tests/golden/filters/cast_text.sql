TRY_CAST(JSON_EXTRACT_STRING(properties, '/tokens') AS INT) = 10
