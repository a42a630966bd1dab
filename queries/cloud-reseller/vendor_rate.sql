-- Rate each usage record at the vendor's cost price valid on its usage date.
-- LEFT JOINs keep every record: one without a subscription or a price gets NULLs,
-- which the stream's contract (nullable: false) sends to the rejects file.
SELECT
    u.record_id,
    u.usage_date,
    u.subscription_id,
    s.customer_id,
    s.reseller_id,
    s.distributor_id,
    u.sku,
    u.quantity,
    p.unit_price AS unit_price_usd,
    -- CAST rounds half away from zero at the 4th decimal.
    CAST(u.quantity * p.unit_price AS DECIMAL(18, 4)) AS cost_usd
FROM input u
LEFT JOIN subscriptions s ON s.subscription_id = u.subscription_id
LEFT JOIN vendor_prices p
    ON p.sku = u.sku
   AND u.usage_date >= p.valid_from
   AND (p.valid_to IS NULL OR u.usage_date < p.valid_to)
