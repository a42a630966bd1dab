-- The vendor's published cost per distributor against what each distributor's usage
-- batch carries (cost_usd, before conversion): the difference must be zero.
WITH vendor AS (
    SELECT _period AS period, distributor_id AS distributor, sum(cost_usd) AS vendor_cost_usd
    FROM nimbus.nimbus_rated_usage
    GROUP BY _period, distributor_id
),
billed AS (
    SELECT _period AS period, 'eurodist' AS distributor, sum(cost_usd) AS billed_cost_usd
    FROM eurodist.eurodist_usage GROUP BY _period
    UNION ALL
    SELECT _period, 'britdist', sum(cost_usd) FROM britdist.britdist_usage GROUP BY _period
)
SELECT v.period, v.distributor, v.vendor_cost_usd, b.billed_cost_usd,
       v.vendor_cost_usd - coalesce(b.billed_cost_usd, 0) AS difference
FROM vendor v LEFT JOIN billed b ON v.period = b.period AND v.distributor = b.distributor
ORDER BY v.period, v.distributor;
