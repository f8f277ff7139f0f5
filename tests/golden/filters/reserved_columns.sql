event_name = 'api_call' AND customer_id IN ('c1', 'c2')
