//! Ships an order whose stock is reserved and announces it with `order.shipped`.

use sluice_sdk::serde_json::Value;
use sluice_sdk::{Error, Event, Response, handler, publish_json};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let mut order: Value = ev.json()?;
    let id = order["order_id"]
        .as_str()
        .ok_or_else(|| Error::permanent("stock.reserved without order_id"))?
        .to_string();
    order["tracking"] = format!("TRACK-{id}").into();
    publish_json("shop", "order.shipped", &order)?;
    Response::json(&order)
}
