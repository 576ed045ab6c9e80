//! A job's webhook callback and where its delivery is.

use serde::{Deserialize, Serialize};

use super::JobId;

/// A webhook callback (`Sluice-Callback`): a signed POST to `url` once the job is terminal,
/// committed with the terminal status and retried until delivered or out of attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// Where to POST.
    pub url: String,
    /// Where the delivery is.
    pub state: CallbackState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (ms since the Unix epoch), while pending.
    pub next_at: Option<u64>,
    /// When it was delivered.
    pub delivered_at: Option<u64>,
    /// Which delivery this is: 0, then one more for each redrive of the job (each end of the
    /// job is a new callback with its own `webhook-id`).
    pub round: u32,
}

/// Where a callback's delivery is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    /// The job has not ended yet.
    Waiting,
    /// The job ended; the POST is due or being retried.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Given up (attempts used up, or the target is refused).
    Failed,
}

impl Callback {
    /// A callback to `url`, waiting for its job to end.
    pub fn new(url: String) -> Callback {
        Callback {
            url,
            state: CallbackState::Waiting,
            attempts: 0,
            last_error: None,
            next_at: None,
            delivered_at: None,
            round: 0,
        }
    }

    /// The Standard Webhooks message id: the same for every attempt of one delivery.
    pub fn message_id(&self, job: JobId) -> String {
        match self.round {
            0 => format!("msg_{job}"),
            n => format!("msg_{job}_{n}"),
        }
    }
}
