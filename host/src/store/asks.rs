//! Leases asked for and not yet answered, and where ready jobs wait that nobody asked for.
//!
//! The scheduler pulls: it asks [`super::Store::lease`] for up to `n` ready jobs of a function
//! when it has room for them, and waits. Every shard's writer, after each commit, hands the jobs
//! that became ready to the waiting asks of their function (oldest ask first); a job nobody
//! asked for stays in its shard's `ready` table and the shard notes the function as
//! *overflowing*. An ask that finds its function overflowing somewhere pokes those shards, which
//! read the next jobs from their table in dispatch order (a range read from where the last one
//! stopped, never a scan). So host memory does not grow with the queue, and a function's jobs
//! are handed out only as fast as the scheduler takes them.
//!
//! Everything here is behind one lock, so an ask and a hand-out never miss each other: either
//! the writer sees the ask and hands the job to it, or the ask sees the overflow and pokes.

use std::collections::{HashMap, HashSet, VecDeque};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::job::{JobId, QueuedJob, ReadyKey};

/// Asks and overflow, shared by the store and every shard's writer.
pub(crate) struct Asks {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Per function, the asks waiting, oldest first.
    waiting: HashMap<String, VecDeque<Ask>>,
    /// Per shard, the functions with ready jobs in its table that were not handed out.
    overflow: Vec<HashSet<String>>,
    /// The next ask's number.
    next: u64,
}

/// One lease request: up to `want` more jobs go to `to`.
struct Ask {
    number: u64,
    want: usize,
    to: mpsc::UnboundedSender<Vec<QueuedJob>>,
}

/// A registered ask: its number (to retract it), where its jobs arrive, and the shards to poke.
pub(crate) struct Registered {
    pub(crate) number: u64,
    pub(crate) jobs: mpsc::UnboundedReceiver<Vec<QueuedJob>>,
    pub(crate) poke: Vec<usize>,
}

impl Asks {
    /// Asks for `shards` shards, each of which may hold ready jobs of any of `deployed` left from
    /// an earlier process.
    pub(crate) fn new(shards: usize, deployed: Vec<String>) -> Asks {
        let overflow = (0..shards)
            .map(|_| deployed.iter().cloned().collect())
            .collect();
        Asks {
            inner: Mutex::new(Inner {
                waiting: HashMap::new(),
                overflow,
                next: 0,
            }),
        }
    }

    /// Registers an ask for up to `want` jobs of `function`.
    pub(crate) fn register(&self, function: &str, want: usize) -> Registered {
        let (to, jobs) = mpsc::unbounded_channel();
        let mut inner = self.inner.lock();
        let number = inner.next;
        inner.next += 1;
        inner
            .waiting
            .entry(function.to_string())
            .or_default()
            .push_back(Ask { number, want, to });
        let poke = inner
            .overflow
            .iter()
            .enumerate()
            .filter(|(_, functions)| functions.contains(function))
            .map(|(shard, _)| shard)
            .collect();
        Registered { number, jobs, poke }
    }

    /// Withdraws an ask: no more jobs go to it (those sent already are in its receiver).
    pub(crate) fn retract(&self, function: &str, number: u64) {
        let mut inner = self.inner.lock();
        if let Some(asks) = inner.waiting.get_mut(function) {
            asks.retain(|a| a.number != number);
            if asks.is_empty() {
                inner.waiting.remove(function);
            }
        }
    }

    /// Hands `shard`'s newly ready (or refilled) jobs to the waiting asks of their functions;
    /// a job nobody takes stays in the table and its function is noted as overflowing there
    /// (and `cursor` forgets where the last read stopped: the job may come before it). Jobs in
    /// `claimed` are handed out already; those handed out now are added to it.
    pub(crate) fn hand_out(
        &self,
        shard: usize,
        ready: Vec<QueuedJob>,
        claimed: &mut HashSet<JobId>,
        cursor: &mut HashMap<String, ReadyKey>,
    ) {
        if ready.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let Inner {
            waiting, overflow, ..
        } = &mut *inner;
        // Per ask (function, number), the jobs it receives, in dispatch order.
        let mut out: Vec<(String, u64, Vec<QueuedJob>)> = Vec::new();
        for job in ready {
            if claimed.contains(&job.id) {
                continue;
            }
            let ask = waiting
                .get_mut(&job.function)
                .and_then(|asks| asks.iter_mut().find(|a| a.want > 0 && !a.to.is_closed()));
            match ask {
                Some(ask) => {
                    ask.want -= 1;
                    claimed.insert(job.id);
                    let number = ask.number;
                    match out
                        .iter_mut()
                        .find(|(f, n, _)| *n == number && *f == job.function)
                    {
                        Some((_, _, jobs)) => jobs.push(job),
                        None => out.push((job.function.clone(), number, vec![job])),
                    }
                }
                None => {
                    cursor.remove(&job.function);
                    overflow[shard].insert(job.function);
                }
            }
        }
        // Sent under the lock: an ask retracted after this finds every job it was given in its
        // receiver.
        for (function, number, jobs) in out {
            if let Some(ask) = waiting
                .get(&function)
                .and_then(|asks| asks.iter().find(|a| a.number == number))
            {
                let _ = ask.to.send(jobs);
            }
        }
    }

    /// The functions with ready jobs left in `shard`'s table that asks wait for.
    pub(crate) fn wanted_overflow(&self, shard: usize) -> Vec<(String, usize)> {
        let inner = self.inner.lock();
        inner.overflow[shard]
            .iter()
            .filter_map(|f| {
                let want: usize = inner
                    .waiting
                    .get(f)
                    .map_or(0, |asks| asks.iter().map(|a| a.want).sum());
                (want > 0).then(|| (f.clone(), want))
            })
            .collect()
    }

    /// `shard`'s table holds no ready job of `function` that was not handed out.
    pub(crate) fn drained(&self, shard: usize, function: &str) {
        self.inner.lock().overflow[shard].remove(function);
    }

    /// `shard`'s table may hold ready jobs of `functions` that were not handed out.
    pub(crate) fn overflowing(&self, shard: usize, functions: impl IntoIterator<Item = String>) {
        self.inner.lock().overflow[shard].extend(functions);
    }
}
