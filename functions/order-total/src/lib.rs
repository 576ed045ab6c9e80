//! `order-total`: a JSON example. Takes an order, returns its total in cents.
//!
//! ```json
//! {"id": "o-1", "items": [{"sku": "tea", "quantity": 2, "unit_cents": 450}], "discount_percent": 10}
//! ```
//! answers `{"id":"o-1","items":2,"subtotal_cents":900,"discount_cents":90,"total_cents":810}`.
//! Bad input (not JSON, no items, a zero quantity) is a permanent error: retrying cannot fix it.
use sluice_sdk::serde::{Deserialize, Serialize};
use sluice_sdk::{Error, Event, Response, handler, log};

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde", deny_unknown_fields)]
struct Order {
    id: String,
    items: Vec<Item>,
    #[serde(default)]
    discount_percent: u32,
}

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde", deny_unknown_fields)]
struct Item {
    sku: String,
    quantity: u32,
    unit_cents: u64,
}

#[derive(Serialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Total {
    id: String,
    items: u64,
    subtotal_cents: u64,
    discount_cents: u64,
    total_cents: u64,
}

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let order: Order = ev.json()?;
    if order.items.is_empty() {
        return Err(Error::permanent(format!("order {} has no items", order.id)));
    }
    if order.discount_percent > 100 {
        return Err(Error::permanent("discount_percent must be at most 100"));
    }
    let mut subtotal: u64 = 0;
    let mut count: u64 = 0;
    for item in &order.items {
        if item.quantity == 0 {
            return Err(Error::permanent(format!(
                "item {} has quantity 0",
                item.sku
            )));
        }
        subtotal += item.unit_cents * u64::from(item.quantity);
        count += u64::from(item.quantity);
    }
    let discount = subtotal * u64::from(order.discount_percent) / 100;
    log::info(format!(
        "order {}: {} items, total {} cents",
        order.id,
        count,
        subtotal - discount
    ));
    Response::json(&Total {
        id: order.id,
        items: count,
        subtotal_cents: subtotal,
        discount_cents: discount,
        total_cents: subtotal - discount,
    })
}
