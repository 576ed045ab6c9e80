//! How the catalog's changes make a function's next version, as pure functions every backend
//! shares: a deploy (whole or changes over a base), new settings, a rollback.

use super::{DeployBase, FunctionRecord, RollbackError, StoreError};
use crate::manifest::Settings;

/// The record a deploy stores over `previous` (`None`: the function is new), or `Ok(None)` when
/// it changes nothing (the same code and settings): then `previous` stays current.
pub(crate) fn deployed(
    mut record: FunctionRecord,
    previous: Option<&FunctionRecord>,
    base: DeployBase,
) -> Result<Option<FunctionRecord>, StoreError> {
    let current = previous.map(|p| p.version);
    if let DeployBase::Current(expected) = base
        && expected != current
    {
        return Err(StoreError::Changed {
            function: record.name,
            current,
        });
    }
    match previous {
        Some(previous) => {
            let changes = record.changes_from(previous);
            if changes.is_empty() {
                return Ok(None);
            }
            record.changes = changes;
            record.version = previous.version + 1;
            record.paused = previous.paused;
        }
        None => record.version = 1,
    }
    record.change = "deploy".into();
    Ok(Some(record))
}

/// `current` with new settings as its next version, or `None` when they are the same.
pub(crate) fn configured(current: &FunctionRecord, settings: Settings) -> Option<FunctionRecord> {
    if current.settings == settings {
        return None;
    }
    let mut record = current.clone();
    record.settings = settings;
    record.changes = record.changes_from(current);
    record.version += 1;
    record.change = "configure".into();
    record.deployed_at = crate::job::now_ms();
    Some(record)
}

/// Which version a rollback of `current` goes back to (`to`: that one; `None`: the one before).
pub(crate) fn rollback_target(
    current: &FunctionRecord,
    to: Option<u32>,
) -> Result<u32, RollbackError> {
    let to = match to {
        Some(v) => v,
        None if current.version > 1 => current.version - 1,
        None => return Err(RollbackError::NoEarlierVersion(current.name.clone())),
    };
    if to >= current.version {
        return Err(RollbackError::NotEarlier {
            name: current.name.clone(),
            to,
            current: current.version,
        });
    }
    Ok(to)
}

/// Version `target`'s code and settings made current again over `current`, as a new version;
/// the paused state is kept.
pub(crate) fn rolled_back(current: &FunctionRecord, target: FunctionRecord) -> FunctionRecord {
    let mut record = FunctionRecord {
        name: current.name.clone(),
        change: format!("rollback to {}", target.version),
        settings: target.settings,
        subscriptions: target.subscriptions,
        then: target.then,
        concurrency_key: target.concurrency_key,
        schedules: target.schedules,
        key_weights: target.key_weights,
        digest: target.digest,
        size: target.size,
        deployed_at: crate::job::now_ms(),
        version: current.version + 1,
        paused: current.paused,
        allowed_outbound_hosts: target.allowed_outbound_hosts,
        config: target.config,
        changes: Vec::new(),
    };
    record.changes = record.changes_from(current);
    record
}
