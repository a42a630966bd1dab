-- A reseller's view of its distributor's priced usage: its own rows, its distributor's
-- price marked up by the reseller's channel terms, in the distributor's currency.
SELECT
    u.record_id,
    u.customer_id,
    u.sku,
    u.currency,
    u.quantity,
    CAST(u.price * (1 + t.markup_pct) AS DECIMAL(18, 4)) AS amount
FROM input u
JOIN channel_terms t ON t.organization_id = '{{ owner }}'
WHERE u.reseller_id = '{{ owner }}'
