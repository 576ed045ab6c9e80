//! Charges an order when it is placed. A declined card is a business outcome, not a failure:
//! the handler publishes `payment.declined` and succeeds (so it is not retried); only a fault
//! (bad input) fails. No coordinator: the next step is whoever subscribes to the outcome.

use sluice_sdk::serde_json::{Value, json};
use sluice_sdk::{Error, Event, Response, handler, publish_json};

/// Orders above this are declined, like a card over its limit.
const LIMIT_CENTS: u64 = 100_000;

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let order: Value = ev.json()?;
    let id = order["order_id"]
        .as_str()
        .ok_or_else(|| Error::permanent("order.placed without order_id"))?;
    let amount = order["amount_cents"].as_u64().unwrap_or(0);
    let declined = order["card"] == "declined" || amount > LIMIT_CENTS;
    if declined {
        let reason = if amount > LIMIT_CENTS {
            "over the card's limit"
        } else {
            "card declined"
        };
        publish_json(
            "shop",
            "payment.declined",
            &json!({ "order_id": id, "reason": reason }),
        )?;
        Response::json(&json!({ "order_id": id, "payment": "declined" }))
    } else {
        let payment_id = format!("pay-{id}");
        let mut paid = order.clone();
        paid["payment_id"] = payment_id.clone().into();
        publish_json("shop", "payment.completed", &paid)?;
        Response::json(&json!({ "order_id": id, "payment": payment_id }))
    }
}
