//! Flow control between the shards' writers and the scheduler: how many more ready jobs the
//! scheduler will hold in memory, per function ("credit").
//!
//! The ready queue lives in redb; the scheduler holds at most a bounded window of it. After each
//! commit a writer hands over newly ready jobs while the function has credit, and leaves the rest
//! in the `ready` table. When the scheduler makes room it grants credit back and pokes the
//! writers, which then read the next jobs from the table in dispatch order. So host memory does
//! not grow with the queue, and taking the next jobs is a range read, never a scan.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Credit per function, shared by the scheduler and every writer.
#[derive(Default)]
pub struct Demand {
    credit: Mutex<HashMap<String, usize>>,
}

impl Demand {
    /// Adds `n` to the function's credit; returns the credit it had before.
    pub fn grant(&self, function: &str, n: usize) -> usize {
        let mut credit = self.credit.lock();
        match credit.get_mut(function) {
            Some(c) => {
                let before = *c;
                *c += n;
                before
            }
            None => {
                credit.insert(function.to_string(), n);
                0
            }
        }
    }

    /// Forgets a function (deleted).
    pub fn remove(&self, function: &str) {
        self.credit.lock().remove(function);
    }

    /// The function's credit now.
    pub fn available(&self, function: &str) -> usize {
        self.credit.lock().get(function).copied().unwrap_or(0)
    }

    /// Takes one unit of credit if there is one.
    pub(crate) fn take_one(credit: &mut HashMap<String, usize>, function: &str) -> bool {
        match credit.get_mut(function) {
            Some(c) if *c > 0 => {
                *c -= 1;
                true
            }
            _ => false,
        }
    }

    /// Locks the credit table (for a writer handing out a batch of jobs).
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, usize>> {
        self.credit.lock()
    }
}
