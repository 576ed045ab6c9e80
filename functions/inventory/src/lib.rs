//! Reserves stock for a paid order and announces it with `stock.reserved`.

use sluice_sdk::serde_json::Value;
use sluice_sdk::{Error, Event, Response, handler, publish_json};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let mut order: Value = ev.json()?;
    let id = order["order_id"]
        .as_str()
        .ok_or_else(|| Error::permanent("payment.completed without order_id"))?
        .to_string();
    order["reservation"] = format!("res-{id}").into();
    publish_json("shop", "stock.reserved", &order)?;
    Response::json(&order)
}
