//! `sluice check`: an offline look at a data directory (the host stopped). Each file is opened
//! on its own, checked by redb (every page's checksum; redb repairs what a crash left if it
//! can), and every record is decoded; the directory's identity says whether a file is missing,
//! empty or from elsewhere. What it finds is reported per file, with what to do.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::dataset;
use super::ids::MAX_SHARDS;
use super::tables::{EVENTS, FUNCTIONS, JOBS, decode_event, decode_function, decode_job};
use super::{StoreError, shard_path, storage};

/// What the check found about one file (or the directory as a whole).
#[derive(Debug)]
pub struct FileCheck {
    /// The file (the directory, for a problem of the whole).
    pub file: PathBuf,
    /// `None` when the file is sound; otherwise what is wrong with it.
    pub problem: Option<String>,
    /// What was looked at (records decoded, whether redb repaired it).
    pub summary: String,
}

/// Checks every file of `data_dir`. Fails only when it cannot look at all (a running host
/// holds the files); damage is reported in the result.
pub fn check(data_dir: &Path) -> Result<Vec<FileCheck>, StoreError> {
    let catalog = data_dir.join("catalog.redb");
    let path_of = |n| shard_path(data_dir, n);
    let mut out = Vec::new();
    if let Err(e) = dataset::check_catalog(data_dir, &catalog, path_of, MAX_SHARDS) {
        out.push(FileCheck {
            file: data_dir.to_path_buf(),
            problem: Some(e.to_string()),
            summary: String::new(),
        });
        return Ok(out);
    }
    if !catalog.exists() {
        out.push(FileCheck {
            file: data_dir.to_path_buf(),
            problem: Some(
                "no catalog.redb: this is not a Sluice data directory (or it was never used)"
                    .into(),
            ),
            summary: String::new(),
        });
        return Ok(out);
    }
    let mut db = match open(&catalog)? {
        Ok(db) => db,
        Err(problem) => {
            out.push(FileCheck {
                file: catalog,
                problem: Some(problem),
                summary: String::new(),
            });
            return Ok(out);
        }
    };
    let mut file = look(&catalog, &mut db, |db| {
        let functions = decode_all(db, FUNCTIONS, |b| decode_function(b).map(drop))?;
        Ok(format!("{functions} functions"))
    });
    let dataset = match dataset::settle(&db, data_dir, path_of, MAX_SHARDS, 1, false) {
        Ok(d) => Some(d),
        Err(e) => {
            file.problem.get_or_insert(e.to_string());
            None
        }
    };
    out.push(file);
    drop(db);
    let shards = dataset.as_ref().map_or_else(
        || (0..MAX_SHARDS).filter(|n| path_of(*n).exists()).count(),
        |d| d.shards,
    );
    for n in 0..shards {
        let path = path_of(n);
        if !path.exists() {
            continue;
        }
        let mut db = match open(&path)? {
            Ok(db) => db,
            Err(problem) => {
                out.push(FileCheck {
                    file: path,
                    problem: Some(problem),
                    summary: String::new(),
                });
                continue;
            }
        };
        let mut file = look(&path, &mut db, |db| {
            let jobs = decode_all(db, JOBS, |b| decode_job(b).map(drop))?;
            let events = decode_all(db, EVENTS, |b| decode_event(b).map(drop))?;
            Ok(format!("{jobs} jobs, {events} events"))
        });
        if file.problem.is_none()
            && let Some(d) = &dataset
            && let Err(e) = dataset::verify_shard(&db, &path, d, n)
        {
            file.problem = Some(e.to_string());
        }
        out.push(file);
    }
    Ok(out)
}

/// Opens a file for the check; a file redb panics on while opening is reported as damaged.
fn open(path: &Path) -> Result<Result<Database, String>, StoreError> {
    let opened = std::panic::catch_unwind(|| Database::builder().open(path));
    let Ok(opened) = opened else {
        return Ok(Err(
            "redb could not open it: a page it reads at open is malformed".into(),
        ));
    };
    opened.map(Ok).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Storage(format!(
            "{} is in use by a running host: stop it, then check",
            path.display()
        )),
        other => StoreError::Storage(format!("cannot open {}: {other}", path.display())),
    })
}

/// redb's integrity check, then every record decoded by `decode` (which says what it saw).
fn look(
    path: &Path,
    db: &mut Database,
    decode: impl Fn(&Database) -> Result<String, String>,
) -> FileCheck {
    let mut check = FileCheck {
        file: path.to_path_buf(),
        problem: None,
        summary: String::new(),
    };
    let integrity = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity()));
    match integrity {
        Ok(Ok(true)) => check.summary.push_str("pages intact"),
        Ok(Ok(false)) => check
            .summary
            .push_str("pages repaired by redb (an unclean stop)"),
        Ok(Err(e)) => {
            check.problem = Some(format!("redb's integrity check failed: {e}"));
            return check;
        }
        Err(panic) => {
            check.problem = Some(StoreError::panicked(path, &*panic).to_string());
            return check;
        }
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(db))) {
        Ok(Ok(seen)) => check.summary.push_str(&format!(", {seen} decoded")),
        Ok(Err(e)) => check.problem = Some(e),
        Err(panic) => check.problem = Some(StoreError::panicked(path, &*panic).to_string()),
    }
    check
}

/// Decodes every row of a table keyed by id or name; returns how many there are.
fn decode_all<K: redb::Key + 'static>(
    db: &Database,
    table: TableDefinition<K, &[u8]>,
    decode: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let name = table.to_string();
    let txn = db.begin_read().map_err(|e| storage(e).to_string())?;
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(storage(e).to_string()),
    };
    let mut n = 0;
    for row in table.iter().map_err(|e| storage(e).to_string())? {
        let (_, v) = row.map_err(|e| storage(e).to_string())?;
        decode(v.value()).map_err(|e| format!("table {name}: record {n} does not decode: {e}"))?;
        n += 1;
    }
    Ok(n)
}
