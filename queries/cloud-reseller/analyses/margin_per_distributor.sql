-- Each distributor's margin for the period: what it billed its resellers (price) less
-- what the vendor's usage cost it in its currency (cost).
SELECT organization, _period AS period, currency, cost, price, price - cost AS margin
FROM (
    SELECT 'eurodist' AS organization, _period, currency, sum(cost) AS cost, sum(price) AS price
    FROM eurodist.eurodist_usage GROUP BY _period, currency
    UNION ALL
    SELECT 'britdist', _period, currency, sum(cost), sum(price)
    FROM britdist.britdist_usage GROUP BY _period, currency
)
ORDER BY organization, period;
