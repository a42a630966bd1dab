#!/usr/bin/env python3
"""Hand calculation of the cloud-reseller pipeline's batches for period 2026-10.

A transparent restatement of what each stage is documented to do (docs/transformations.md),
in exact decimal arithmetic, independent of billflow's code. Run it from anywhere:

    python3 tests/golden/cloud-reseller/compute_expected.py

It rewrites the expected CSVs and control totals next to it, and the samples' expected
outputs under data-samples/cloud-reseller/samples/.
"""
import csv
import json
from collections import OrderedDict, defaultdict
from decimal import ROUND_HALF_EVEN, Decimal, getcontext
from fractions import Fraction
from pathlib import Path
from datetime import date

getcontext().prec = 60
HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[2] / "data-samples" / "cloud-reseller"
PERIOD = ("2026-10-01", "2026-11-01")  # [start, end)


def q(x, places):
    """Round half-even to `places` decimals (billflow's default rounding)."""
    return Decimal(x).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def div_round(a, b, places):
    """a / b rounded half-even on the exact quotient."""
    exact = Fraction(a) / Fraction(b)
    scaled = exact * 10**places
    floor = scaled.numerator // scaled.denominator
    rem = scaled - floor
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return Decimal(floor).scaleb(-places)


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fmt(x, places):
    return f"{Decimal(x):.{places}f}"


def allocate(charge, lines, weight, order_key, places):
    """Share `charge` over `lines` in proportion to `weight` (equally if the weights add up
    to zero), rounded; the residue goes to the line with the largest |weight|, ties broken
    by `order_key`."""
    total = sum(weight(l) for l in lines)
    if total == 0:
        shares = [div_round(charge, len(lines), places) for _ in lines]
    else:
        shares = [div_round(charge * weight(l), total, places) for l in lines]
    residue = charge - sum(shares)
    first = sorted(range(len(lines)), key=lambda i: (-abs(weight(lines[i])), order_key(lines[i])))[0]
    shares[first] += residue
    return shares


def vendor(usage_rows, subs, prices):
    """nimbus-rated-usage: normalise SKU, look up the subscription, rate per unit per
    (subscription, SKU, price version) and allocate back to lines."""
    rejects, lines = [], []
    for r in usage_rows:
        r = dict(r)
        r["sku"] = r["sku"].strip().upper()
        s = subs.get(r["subscription_id"])
        if s is None:
            rejects.append((r["record_id"], "no subscription"))
            continue
        r.update(customer_id=s["customer_id"], reseller_id=s["reseller_id"], distributor_id=s["distributor_id"])
        version = [p for p in prices if p["sku"] == r["sku"] and p["valid_from"] <= r["usage_date"] and (not p["valid_to"] or r["usage_date"] < p["valid_to"])]
        if not version:
            rejects.append((r["record_id"], f"no price in `vendor_prices` for ({r['sku']}) valid on {r['usage_date']}"))
            continue
        r["price"] = version[0]
        lines.append(r)
    groups = OrderedDict()
    for r in lines:
        groups.setdefault((r["subscription_id"], r["sku"], r["price"]["valid_from"]), []).append(r)
    out = []
    for (_, _, _), g in groups.items():
        quantity = sum(Decimal(r["quantity"]) for r in g)
        charge = q(quantity * Decimal(r_price(g)), 4)
        shares = allocate(charge, g, lambda l: Decimal(l["quantity"]), lambda l: l["record_id"], 4)
        for r, share in zip(g, shares):
            out.append({
                "record_id": r["record_id"], "usage_date": r["usage_date"], "subscription_id": r["subscription_id"],
                "customer_id": r["customer_id"], "reseller_id": r["reseller_id"], "distributor_id": r["distributor_id"],
                "sku": r["sku"], "quantity": fmt(r["quantity"], 6), "cost_usd": fmt(share, 4),
            })
    return sorted(out, key=lambda r: r["record_id"]), rejects


def r_price(group):
    return group[0]["price"]["unit_price"]


def distributor(owner, vendor_rows, terms, fx):
    """<distributor>-usage: own rows, USD cost converted at the rate valid on the usage
    date (4 places), then marked up by the channel terms (4 places)."""
    currency = terms[owner]["currency"]
    markup = Decimal(terms[owner]["markup_pct"])
    out = []
    for r in vendor_rows:
        if r["distributor_id"] != owner:
            continue
        rate = [f for f in fx if f["from_currency"] == "USD" and f["to_currency"] == currency and f["valid_from"] <= r["usage_date"] and (not f["valid_to"] or r["usage_date"] < f["valid_to"])]
        assert len(rate) == 1, r
        cost = q(Decimal(r["cost_usd"]) * Decimal(rate[0]["rate"]), 4)
        price = q(cost * (1 + markup), 4)
        out.append({
            "record_id": r["record_id"], "usage_date": r["usage_date"], "customer_id": r["customer_id"],
            "reseller_id": r["reseller_id"], "sku": r["sku"], "quantity": r["quantity"], "cost_usd": r["cost_usd"],
            "cost": fmt(cost, 4), "price": fmt(price, 4), "currency": currency,
        })
    return out


def reseller(owner, distributor_rows, terms):
    """<reseller>-invoice-lines: own rows marked up (4 places), one line per customer, SKU
    and currency, rounded to cents with the residue of each customer on its largest line."""
    markup = Decimal(terms[owner]["markup_pct"])
    groups = OrderedDict()
    for r in distributor_rows:
        if r["reseller_id"] != owner:
            continue
        amount = q(Decimal(r["price"]) * (1 + markup), 4)
        g = groups.setdefault((r["customer_id"], r["sku"], r["currency"]), [Decimal(0), Decimal(0), 0])
        g[0] += Decimal(r["quantity"])
        g[1] += amount
        g[2] += 1
    lines = [{"customer_id": k[0], "sku": k[1], "currency": k[2], "quantity": v[0], "exact": v[1], "usage_lines": v[2]} for k, v in groups.items()]
    by_customer = defaultdict(list)
    for l in lines:
        by_customer[l["customer_id"]].append(l)
    for customer, ls in by_customer.items():
        target = q(sum(l["exact"] for l in ls), 2)
        for l in ls:
            l["amount"] = q(l["exact"], 2)
        residue = target - sum(l["amount"] for l in ls)
        first = sorted(ls, key=lambda l: (-abs(l["exact"]), l["sku"]))[0]
        first["amount"] += residue
    return sorted(
        ({"customer_id": l["customer_id"], "sku": l["sku"], "currency": l["currency"], "quantity": fmt(l["quantity"], 6), "amount": fmt(l["amount"], 2), "usage_lines": str(l["usage_lines"])} for l in lines),
        key=lambda r: (r["customer_id"], r["sku"]),
    )


CATEGORIES = {"VM": "compute", "STORAGE": "storage", "EGRESS": "network", "SUPPORT": "services"}


def nimbus_price_list(prices):
    out = []
    for p in prices:
        family, variant = p["sku"].split("-", 1)
        out.append({
            "sku": p["sku"], "description": p["description"], "family": family, "variant": variant,
            "category": CATEGORIES[family], "list_price_usd": fmt(p["unit_price"], 6),
            "valid_from": p["valid_from"], "valid_to": p["valid_to"], "open_ended": "false" if p["valid_to"] else "true",
        })
    return sorted(out, key=lambda r: (r["sku"], r["valid_from"]))


def eurodist_price_list(price_list, fx):
    """Open-ended prices as reviewed by hand (the manual stage's file, checked here against
    the vendor's list: the review only removes SKUs), converted at the period's closing
    rate (6 places), priced for a 15% margin (4 places) and a 5% promotional price (4
    places)."""
    reviewed = read(SAMPLE / "manual/eurodist-price-list-reviewed.csv")
    current = {p["sku"]: p for p in price_list if p["open_ended"] == "true"}
    for r in reviewed:
        assert {k: v for k, v in r.items()} == current[r["sku"]], (r, current[r["sku"]])
    price_list = reviewed
    closing = "2026-10-31"
    rate = [f for f in fx if f["from_currency"] == "USD" and f["to_currency"] == "EUR" and f["valid_from"] <= closing and (not f["valid_to"] or closing < f["valid_to"])]
    assert len(rate) == 1
    out = []
    for p in price_list:
        if p["open_ended"] != "true":
            continue
        cost = q(Decimal(p["list_price_usd"]) * Decimal(rate[0]["rate"]), 6)
        list_price = div_round(cost, Decimal("1") - Decimal("0.15"), 4)
        promo = q(list_price * (Decimal("1") - Decimal("0.05")), 4)
        out.append({"sku": p["sku"], "category": p["category"], "list_price_usd": p["list_price_usd"], "list_price_eur": fmt(list_price, 4), "promo_price_eur": fmt(promo, 4)})
    return sorted(out, key=lambda r: r["sku"])


def alpha_it_focus(lines):
    """FOCUS 1.2 rows of alpha-it's invoice lines: costs default to BilledCost, the charge
    and billing periods to the run's period, the issuer is the reseller, the provider and
    publisher the vendor."""
    out = []
    for l in lines:
        out.append({
            "BilledCost": l["amount"], "EffectiveCost": l["amount"], "ListCost": l["amount"], "ContractedCost": l["amount"],
            "BillingCurrency": l["currency"], "PricingCurrency": l["currency"],
            "BillingAccountId": l["customer_id"], "BillingAccountName": l["customer_id"], "SubAccountId": "", "SubAccountName": "",
            "BillingPeriodStart": "2026-10-01T00:00:00", "BillingPeriodEnd": "2026-11-01T00:00:00",
            "ChargePeriodStart": "2026-10-01T00:00:00", "ChargePeriodEnd": "2026-11-01T00:00:00",
            "ChargeCategory": "Usage", "ChargeClass": "", "ChargeDescription": "Cloud usage",
            "InvoiceIssuerName": "Alpha IT Services", "ProviderName": "Nimbus Cloud Inc.", "PublisherName": "Nimbus Cloud Inc.",
            "ServiceName": "", "ServiceCategory": "", "SkuId": l["sku"], "SkuPriceId": "",
            "PricingQuantity": l["quantity"], "PricingUnit": "", "ConsumedQuantity": l["quantity"], "ConsumedUnit": "",
            "RegionId": "", "RegionName": "", "ResourceId": "", "ResourceName": "", "x_usage_lines": l["usage_lines"],
        })
    return out


FOCUS_COLUMNS = [
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency", "PricingCurrency", "BillingAccountId",
    "BillingAccountName", "SubAccountId", "SubAccountName", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart",
    "ChargePeriodEnd", "ChargeCategory", "ChargeClass", "ChargeDescription", "InvoiceIssuerName", "ProviderName",
    "PublisherName", "ServiceName", "ServiceCategory", "SkuId", "SkuPriceId", "PricingQuantity", "PricingUnit",
    "ConsumedQuantity", "ConsumedUnit", "RegionId", "RegionName", "ResourceId", "ResourceName", "x_usage_lines",
]


def subscription_fees(fees, subs):
    """Each plan's monthly fee for the days it was active in October (31 days), exact
    then rounded half-even to 4 places; plans not active in October are dropped."""
    start, end = date(2026, 10, 1), date(2026, 11, 1)
    out = []
    for f in fees:
        a = max(date.fromisoformat(f["active_from"]) if f["active_from"] else start, start)
        b = min(date.fromisoformat(f["active_to"]) if f["active_to"] else end, end)
        days = max((b - a).days, 0)
        if days == 0:
            continue
        fee = div_round(Decimal(f["monthly_fee"]) * days, (end - start).days, 4)
        out.append({**f, "customer_id": subs[f["subscription_id"]]["customer_id"], "fee": fmt(fee, 4), "active_days": str(days)})
    return sorted(out, key=lambda r: (r["subscription_id"], r["plan"]))


def write(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def totals(rows, decimals):
    t = {c: Decimal(0) for c in decimals}
    for r in rows:
        for c, places in decimals.items():
            t[c] += Decimal(r[c])
    return {"rows": len(rows), "totals": {c: fmt(v, decimals[c]) for c, v in t.items()}}


def main():
    subs = {s["subscription_id"]: s for s in read(SAMPLE / "reference/subscriptions.csv")}
    prices = read(SAMPLE / "reference/vendor_prices.csv")
    terms = {t["organization_id"]: t for t in read(SAMPLE / "reference/channel_terms.csv")}
    fx = read(SAMPLE / "reference/fx_rates.csv")
    usage = [r for f in sorted((SAMPLE / "inputs").glob("usage-*.csv")) for r in read(f)]
    october = [r for r in usage if PERIOD[0] <= r["usage_date"] < PERIOD[1]]

    vendor_cols = ["record_id", "usage_date", "subscription_id", "customer_id", "reseller_id", "distributor_id", "sku", "quantity", "cost_usd"]
    dist_cols = ["record_id", "usage_date", "customer_id", "reseller_id", "sku", "quantity", "cost_usd", "cost", "price", "currency"]
    res_cols = ["customer_id", "sku", "currency", "quantity", "amount", "usage_lines"]
    v, rejects = vendor(october, subs, prices)
    # Distributors see the vendor batch with its subscription and distributor ids.
    streams = {"nimbus-rated-usage": (v, vendor_cols, {"quantity": 6, "cost_usd": 4})}
    for d in ["eurodist", "britdist"]:
        streams[f"{d}-usage"] = (distributor(d, v, terms, fx), dist_cols, {"quantity": 6, "cost_usd": 4, "cost": 4, "price": 4})
    for r, d in [("alpha-it", "eurodist"), ("bergen-data", "eurodist"), ("clyde-cloud", "britdist")]:
        streams[f"{r}-invoice-lines"] = (reseller(r, streams[f"{d}-usage"][0], terms), res_cols, {"quantity": 6, "amount": 2})
    streams["alpha-it-focus"] = (alpha_it_focus(streams["alpha-it-invoice-lines"][0]), FOCUS_COLUMNS, {"BilledCost": 2, "EffectiveCost": 2, "ListCost": 2, "ContractedCost": 2, "PricingQuantity": 6, "ConsumedQuantity": 6})
    fees = read(SAMPLE / "inputs/subscription-fees.csv")
    streams["nimbus-subscription-fees"] = (subscription_fees(fees, subs), ["subscription_id", "plan", "monthly_fee", "active_from", "active_to", "customer_id", "fee", "active_days"], {"monthly_fee": 2, "fee": 4})
    pl = nimbus_price_list(prices)
    streams["nimbus-price-list"] = (pl, ["sku", "description", "family", "variant", "category", "list_price_usd", "valid_from", "valid_to", "open_ended"], {"list_price_usd": 6})
    streams["eurodist-price-list"] = (eurodist_price_list(pl, fx), ["sku", "category", "list_price_usd", "list_price_eur", "promo_price_eur"], {"list_price_usd": 6, "list_price_eur": 4, "promo_price_eur": 4})

    control = {}
    for name, (rows, cols, decimals) in streams.items():
        write(HERE / f"{name}.csv", rows, cols)
        control[name] = totals(rows, decimals)
    (HERE / "control_totals.json").write_text(json.dumps(control, indent=2) + "\n")
    write(HERE / "rejects.csv", [{"stream_id": "nimbus-rated-usage", "record_id": r, "reason": why} for r, why in rejects], ["stream_id", "record_id", "reason"])

    # Samples for `billflow test`.
    sample_v, _ = vendor(read(SAMPLE / "samples/nimbus-input.csv"), subs, prices)
    write(SAMPLE / "samples/nimbus-expected.csv", sample_v, vendor_cols)
    sample_in = read(SAMPLE / "samples/alpha-it-input.csv")
    write(SAMPLE / "samples/alpha-it-expected.csv", reseller("alpha-it", sample_in, terms), res_cols)
    for name, c in control.items():
        print(f"{name:28} {c}")
    print("rejects:", rejects)


if __name__ == "__main__":
    main()
