-- A distributor's view of the vendor's rated usage: its own rows, converted from USD at
-- the rate valid on the usage date, then marked up by its channel terms.
-- {{ owner }} is the organisation that owns the stream being run.
SELECT
    u.record_id,
    u.usage_date,
    u.customer_id,
    u.reseller_id,
    u.sku,
    u.quantity,
    u.cost_usd,
    fx.rate AS fx_rate,
    CAST(u.cost_usd * fx.rate AS DECIMAL(18, 4)) AS cost,
    CAST(CAST(u.cost_usd * fx.rate AS DECIMAL(18, 4)) * (1 + t.markup_pct) AS DECIMAL(18, 4)) AS price,
    t.currency
FROM input u
JOIN channel_terms t ON t.organization_id = '{{ owner }}'
LEFT JOIN fx_rates fx
    ON fx.from_currency = 'USD'
   AND fx.to_currency = t.currency
   AND u.usage_date >= fx.valid_from
   AND (fx.valid_to IS NULL OR u.usage_date < fx.valid_to)
WHERE u.distributor_id = '{{ owner }}'
