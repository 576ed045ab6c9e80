"""`py-order-total`: what `order-total` does, in Python. Takes an order, returns its total in cents.

    {"id": "o-1", "items": [{"sku": "tea", "quantity": 2, "unit_cents": 450}], "discount_percent": 10}

answers {"id":"o-1","items":2,"subtotal_cents":900,"discount_cents":90,"total_cents":810}.
Bad input (not JSON, no items, a zero quantity) is a permanent error: retrying cannot fix it.
"""

from sluice import Event, Permanent, Response, WitWorld, handler, log  # noqa: F401 (WitWorld is the export)


@handler
def handle(ev: Event) -> Response:
    order = ev.json()
    if not isinstance(order, dict) or not isinstance(order.get("items"), list):
        raise Permanent("an order is {\"id\": ..., \"items\": [...]}")
    if not order["items"]:
        raise Permanent(f"order {order.get('id')} has no items")
    discount_percent = order.get("discount_percent", 0)
    if discount_percent > 100:
        raise Permanent("discount_percent must be at most 100")
    subtotal = count = 0
    for item in order["items"]:
        if item["quantity"] == 0:
            raise Permanent(f"item {item['sku']} has quantity 0")
        subtotal += item["unit_cents"] * item["quantity"]
        count += item["quantity"]
    discount = subtotal * discount_percent // 100
    log.info(f"order {order['id']}: {count} items, {subtotal - discount} cents")
    return Response.json({
        "id": order["id"],
        "items": count,
        "subtotal_cents": subtotal,
        "discount_cents": discount,
        "total_cents": subtotal - discount,
    })
