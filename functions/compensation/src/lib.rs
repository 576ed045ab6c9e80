//! The unhappy path of the choreography: when a payment is declined, release whatever was held
//! for the order (nothing is reserved before payment here, so it only records that), notify the
//! customer (a log line), and announce `order.cancelled`.

use sluice_sdk::serde_json::{Value, json};
use sluice_sdk::{Error, Event, Response, handler, log, publish_json};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let declined: Value = ev.json()?;
    let id = declined["order_id"]
        .as_str()
        .ok_or_else(|| Error::permanent("payment.declined without order_id"))?;
    let reason = declined["reason"].as_str().unwrap_or("payment declined");
    log::info(format!("notify customer: order {id} cancelled ({reason})"));
    let cancelled = json!({ "order_id": id, "reason": reason, "stock_released": true });
    publish_json("shop", "order.cancelled", &cancelled)?;
    Response::json(&cancelled)
}
