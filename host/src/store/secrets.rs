//! Function secrets in the catalog: sealed values (the store never sees them in the clear),
//! each written in its own durable commit; removed with their function.

use redb::{ReadableDatabase, ReadableTable};

use super::catalog::Catalog;
use super::tables::SECRETS;
use super::{StoreError, storage};

/// A function's secret as stored: its name, when it was set, and its sealed value.
#[derive(Clone, Debug)]
pub struct SealedSecret {
    /// The secret's name.
    pub name: String,
    /// When it was last set (ms since the Unix epoch).
    pub updated_at: u64,
    /// The value, sealed by [`crate::vault::Vault`].
    pub sealed: Vec<u8>,
}

impl Catalog {
    /// Sets secret `name` of `function` to a sealed value; false when the function is not
    /// deployed, or it has `max` secrets already and this is a new one (`Err` names neither:
    /// the caller says which).
    pub(crate) fn put_secret(
        &self,
        function: &str,
        name: &str,
        sealed: &[u8],
        at: u64,
        max: usize,
    ) -> Result<PutSecret, StoreError> {
        if !self.deployed().contains(function) {
            return Ok(PutSecret::NoFunction);
        }
        let txn = self.write()?;
        {
            let mut table = txn.open_table(SECRETS).map_err(storage)?;
            let exists = table.get((function, name)).map_err(storage)?.is_some();
            if !exists {
                let count = table
                    .range((function, "")..=(function, "\u{10ffff}"))
                    .map_err(storage)?
                    .count();
                if count >= max {
                    return Ok(PutSecret::TooMany);
                }
            }
            table
                .insert((function, name), (at, sealed))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(PutSecret::Stored)
    }

    /// Removes secret `name` of `function`; false when there was none.
    pub(crate) fn delete_secret(&self, function: &str, name: &str) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let removed = txn
            .open_table(SECRETS)
            .map_err(storage)?
            .remove((function, name))
            .map_err(storage)?
            .is_some();
        txn.commit().map_err(storage)?;
        Ok(removed)
    }

    /// A function's secrets, by name.
    pub(crate) fn secrets(&self, function: &str) -> Result<Vec<SealedSecret>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SECRETS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table
            .range((function, "")..=(function, "\u{10ffff}"))
            .map_err(storage)?
        {
            let (key, value) = row.map_err(storage)?;
            let (updated_at, sealed) = value.value();
            out.push(SealedSecret {
                name: key.value().1.to_string(),
                updated_at,
                sealed: sealed.to_vec(),
            });
        }
        Ok(out)
    }
}

/// What [`Catalog::put_secret`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutSecret {
    /// Stored durably.
    Stored,
    /// The function is not deployed.
    NoFunction,
    /// The function has the most secrets it may have.
    TooMany,
}
