"""The point of sale: lanes (baskets, loyalty scans, totals), their checkouts and coupons.

- `lanes`: a lane's session, and the hooks on its device events (a total becomes a checkout);
- `checkout`: the checkout's pending record, committed with the total, and its settling;
- `coupons`: a coupon's one and only redemption.
"""

# Nothing imported here: the moment pipeline uses `checkout` and the lanes use the pipeline.
