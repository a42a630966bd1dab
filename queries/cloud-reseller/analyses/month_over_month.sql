-- The vendor's rated usage cost per period, with the period before it and the change.
SELECT period, cost_usd,
       lag(cost_usd) OVER (ORDER BY period) AS previous_cost_usd,
       cost_usd - lag(cost_usd) OVER (ORDER BY period) AS change_usd
FROM (
    SELECT _period AS period, sum(cost_usd) AS cost_usd
    FROM nimbus.nimbus_rated_usage
    GROUP BY _period
)
ORDER BY period;
