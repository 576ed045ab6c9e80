//! Job ids that name their shard.
//!
//! An id is a ULID (48-bit millisecond timestamp, 80 bits below it) whose lowest byte is the
//! number of the shard file that holds the job, so any id leads straight to its shard. Ids from
//! one shard's generator increase strictly, so they sort in that shard's commit order.

use crate::job::{JobId, now_ms};

/// Shards a data directory may have: the shard number must fit the id's lowest byte.
pub(crate) const MAX_SHARDS: usize = 256;

/// The shard holding a job (the id's lowest byte).
pub(crate) fn shard_of(id: JobId) -> usize {
    (id.0 & 0xff) as usize
}

/// Generates the ids of one shard: monotonic, never repeated within a process, and unique
/// across processes by their random start within each millisecond.
pub(crate) struct IdGenerator {
    shard: u8,
    last_ms: u64,
    /// The next 72-bit sequence value within `last_ms`.
    next: u128,
}

const SEQ_BITS: u32 = 72;
const SEQ_MASK: u128 = (1 << SEQ_BITS) - 1;

impl IdGenerator {
    pub(crate) fn new(shard: usize) -> Self {
        assert!(
            shard < MAX_SHARDS,
            "shard number {shard} does not fit a job id"
        );
        IdGenerator {
            shard: shard as u8,
            last_ms: 0,
            next: 0,
        }
    }

    /// The next id of this shard.
    pub(crate) fn generate(&mut self) -> JobId {
        let ms = now_ms().max(self.last_ms);
        if ms > self.last_ms || self.next > SEQ_MASK {
            // A new millisecond starts at a random point in the lower half of the sequence
            // space, leaving room for 2^71 ids before it could overflow.
            let ms = if self.next > SEQ_MASK { ms + 1 } else { ms };
            self.last_ms = ms;
            self.next = ulid::Ulid::new().random() & (SEQ_MASK >> 1);
        }
        let seq = self.next;
        self.next += 1;
        JobId(((self.last_ms as u128) << 80) | (seq << 8) | self.shard as u128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_their_shard() {
        let mut g = IdGenerator::new(3);
        let mut last = g.generate();
        assert_eq!(shard_of(last), 3);
        for _ in 0..10_000 {
            let id = g.generate();
            assert!(id > last, "{id} after {last}");
            assert_eq!(shard_of(id), 3);
            last = id;
        }
        // Still a ULID whose timestamp is now.
        let ts = ulid::Ulid(last.0).timestamp_ms();
        assert!(now_ms().abs_diff(ts) < 60_000, "timestamp {ts}");
    }

    #[test]
    fn shards_never_share_an_id() {
        let mut a = IdGenerator::new(0);
        let mut b = IdGenerator::new(1);
        let ids: std::collections::HashSet<_> = (0..1000)
            .flat_map(|_| [a.generate(), b.generate()])
            .collect();
        assert_eq!(ids.len(), 2000);
    }
}
