-- The vendor's published usage: the rated lines, without the raw unit column.
SELECT
    record_id,
    usage_date,
    subscription_id,
    customer_id,
    reseller_id,
    distributor_id,
    sku,
    quantity,
    cost_usd
FROM input
