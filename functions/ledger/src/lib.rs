//! `ledger`: takes ledger entries `{"account": "a", "amount": 12.5}` in batches, as a bulk
//! insert would. Each entry gets its own result: its amount, the batch's size and total, and
//! its place in the batch. An entry without a numeric amount fails permanently on its own;
//! `{"retry": true}` fails retryably; the rest of the batch succeeds. `{"panic": true}` brings
//! the whole call down (the host then runs each entry alone, so only that one fails).
use sluice_sdk::serde_json::{Value, json};
use sluice_sdk::{Error, Event, Response, batch_handler};

#[batch_handler]
fn handle(events: Vec<Event>) -> Vec<Result<Response, Error>> {
    let entries: Vec<Result<Value, Error>> = events.iter().map(|e| e.json::<Value>()).collect();
    let amount = |v: &Value| v["amount"].as_f64();
    if entries
        .iter()
        .any(|e| e.as_ref().is_ok_and(|v| v["panic"] == true))
    {
        panic!("an entry asked the batch to panic");
    }
    let total: f64 = entries
        .iter()
        .filter_map(|e| e.as_ref().ok().and_then(amount))
        .sum();
    sluice_sdk::log::info(&format!("batch of {} entries, total {total}", events.len()));
    entries
        .into_iter()
        .enumerate()
        .map(|(position, entry)| {
            let entry = entry?;
            if entry["retry"] == true {
                return Err(Error::retryable("asked to fail retryably"));
            }
            let Some(value) = amount(&entry) else {
                return Err(Error::permanent("an entry needs a numeric \"amount\""));
            };
            Response::json(&json!({
                "amount": value,
                "batch_size": events.len(),
                "batch_total": total,
                "position": position,
            }))
        })
        .collect()
}
