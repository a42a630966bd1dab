-- Revenue by tier and product: what each organisation billed the tier below it, per
-- period and SKU, in its own currency (distributors bill `price`, resellers `amount`).
SELECT 'distributor' AS tier, 'eurodist' AS organization, _period AS period, currency, sku, sum(price) AS revenue
FROM eurodist.eurodist_usage GROUP BY _period, currency, sku
UNION ALL
SELECT 'distributor', 'britdist', _period, currency, sku, sum(price)
FROM britdist.britdist_usage GROUP BY _period, currency, sku
UNION ALL
SELECT 'reseller', 'alpha-it', _period, currency, sku, sum(amount)
FROM alpha_it.alpha_it_invoice_lines GROUP BY _period, currency, sku
UNION ALL
SELECT 'reseller', 'bergen-data', _period, currency, sku, sum(amount)
FROM bergen_data.bergen_data_invoice_lines GROUP BY _period, currency, sku
UNION ALL
SELECT 'reseller', 'clyde-cloud', _period, currency, sku, sum(amount)
FROM clyde_cloud.clyde_cloud_invoice_lines GROUP BY _period, currency, sku
ORDER BY tier, organization, period, sku;
