//! What a successful attempt produced: its output bytes, held in memory while small and spooled
//! to a file in the data directory once they pass the claim-check threshold, so a handler that
//! streams hundreds of MiB out (`write-output`) costs the host a bounded amount of memory.
//!
//! The runtime fills an [`OutputSink`] as the guest writes, hashing as it goes; the attempt's
//! [`Output`] then travels to the store, whose commit copies a spooled output into blob chunks
//! a chunk at a time. A spool file is deleted when the last handle to it goes (after that
//! commit, or with the attempt that failed); files left by a crash are removed at start, since
//! an attempt whose finish was never committed runs again.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::Digest;

use crate::job::BlobRef;

/// The bytes of a successful attempt's output.
#[derive(Clone, Debug)]
pub enum Output {
    /// Held in memory. `blob` is set when it is large enough to be stored as a blob (hashed
    /// where the attempt ran, so the store's writer does not hash).
    Memory {
        /// The bytes.
        bytes: Vec<u8>,
        /// Its blob reference, when it is over the claim-check threshold.
        blob: Option<BlobRef>,
    },
    /// Streamed to a spool file as the handler wrote it; always stored as a blob.
    Spooled(Spool),
}

impl Output {
    /// Output held in memory, with no blob reference yet.
    pub fn bytes(bytes: Vec<u8>) -> Output {
        Output::Memory { bytes, blob: None }
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Output::Memory { bytes, .. } => bytes.len() as u64,
            Output::Spooled(spool) => spool.blob().size,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A finished spool file: an output's bytes on disk, with their digest and size. Clones share
/// the file, which is deleted when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Spool(Arc<SpoolFile>);

#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    blob: BlobRef,
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove a spool file: {e}");
        }
    }
}

impl Spool {
    /// The blob these bytes become.
    pub fn blob(&self) -> BlobRef {
        self.0.blob
    }

    /// The file holding the bytes (for a reader of its own, e.g. an upload).
    pub fn path(&self) -> &std::path::Path {
        &self.0.path
    }

    /// Calls `each` with the bytes in pieces of `piece` bytes (the last may be shorter), in
    /// order, reading one piece at a time. Fails when the file is shorter or longer than its
    /// recorded size.
    pub fn for_each_piece(
        &self,
        piece: usize,
        each: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let path = &self.0.path;
        let fail = |e: std::io::Error| format!("cannot read spool file {}: {e}", path.display());
        let mut file = File::open(path).map_err(fail)?;
        let mut buffer = vec![0u8; piece];
        let mut left = self.0.blob.size;
        while left > 0 {
            let want = piece.min(left as usize);
            file.read_exact(&mut buffer[..want]).map_err(fail)?;
            each(&buffer[..want])?;
            left -= want as u64;
        }
        if file.read(&mut [0u8; 1]).map_err(fail)? != 0 {
            return Err(format!(
                "spool file {} is longer than its output",
                path.display()
            ));
        }
        Ok(())
    }
}

/// The directory spool files are written to, cleared at start.
#[derive(Debug)]
pub struct SpoolDir {
    path: PathBuf,
    next: AtomicU64,
}

impl SpoolDir {
    /// Creates (or empties) `path`: files in it belong to attempts of an earlier run.
    pub fn open(path: &Path) -> std::io::Result<SpoolDir> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(path)?;
        Ok(SpoolDir {
            path: path.to_owned(),
            next: AtomicU64::new(0),
        })
    }

    fn create(&self) -> std::io::Result<(PathBuf, File)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.path.join(format!("output-{n}"));
        let file = File::create(&path)?;
        Ok((path, file))
    }
}

/// One attempt's output as the guest streams it: in memory up to `spill_at` bytes, then in a
/// spool file, hashed as it is written. At most `max` bytes in all.
pub struct OutputSink {
    dir: Arc<SpoolDir>,
    spill_at: usize,
    max: u64,
    memory: Vec<u8>,
    spilled: Option<Spilled>,
    size: u64,
}

struct Spilled {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    hasher: sha2::Sha256,
}

impl Drop for Spilled {
    fn drop(&mut self) {
        // Reached only when the attempt never finished its output; a finished one renames
        // nothing and hands the path to its Spool (see `finish`), clearing this one.
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl OutputSink {
    /// An empty sink spilling to `dir` past `spill_at` bytes, refusing more than `max`.
    pub fn new(dir: Arc<SpoolDir>, spill_at: usize, max: usize) -> OutputSink {
        OutputSink {
            dir,
            spill_at,
            max: max as u64,
            memory: Vec::new(),
            spilled: None,
            size: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Appends `chunk`, or says why it cannot (over the limit, or the disk refused it).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.size + chunk.len() as u64 > self.max {
            return Err(format!(
                "the output is over the host's limit of {} MiB",
                self.max >> 20
            ));
        }
        if self.spilled.is_none() && self.memory.len() + chunk.len() > self.spill_at {
            let (path, file) = self
                .dir
                .create()
                .map_err(|e| format!("the host cannot store this output now: {e}"))?;
            let mut spilled = Spilled {
                path,
                file: std::io::BufWriter::with_capacity(64 << 10, file),
                hasher: sha2::Sha256::new(),
            };
            let memory = std::mem::take(&mut self.memory);
            spilled.append(&memory)?;
            self.spilled = Some(spilled);
        }
        match &mut self.spilled {
            Some(spilled) => spilled.append(chunk)?,
            None => self.memory.extend_from_slice(chunk),
        }
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// The whole output: what was streamed, then `tail` (the response's own data). Output over
    /// `spill_at` bytes comes back with its blob reference.
    pub fn finish(mut self, tail: Vec<u8>) -> Result<Output, String> {
        if self.spilled.is_none() && self.memory.is_empty() {
            return Ok(memory_output(tail, self.spill_at));
        }
        self.write(&tail)?;
        let Some(mut spilled) = self.spilled.take() else {
            let memory = std::mem::take(&mut self.memory);
            return Ok(memory_output(memory, self.spill_at));
        };
        spilled
            .file
            .flush()
            .map_err(|e| format!("the host cannot store this output now: {e}"))?;
        let digest = std::mem::take(&mut spilled.hasher).finalize().into();
        let path = std::mem::take(&mut spilled.path);
        Ok(Output::Spooled(Spool(Arc::new(SpoolFile {
            path,
            blob: BlobRef {
                digest,
                size: self.size,
            },
        }))))
    }
}

impl Spilled {
    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|e| format!("the host cannot store this output now: {e}"))
    }
}

fn memory_output(bytes: Vec<u8>, spill_at: usize) -> Output {
    let blob = (bytes.len() > spill_at).then(|| BlobRef::of(&bytes));
    Output::Memory { bytes, blob }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Arc<SpoolDir>, spill_at: usize, max: usize) -> OutputSink {
        OutputSink::new(dir.clone(), spill_at, max)
    }

    fn collect(spool: &Spool, piece: usize) -> Vec<u8> {
        let mut all = Vec::new();
        spool
            .for_each_piece(piece, &mut |p| {
                assert!(p.len() <= piece);
                all.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
        all
    }

    #[test]
    fn small_output_stays_in_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(SpoolDir::open(&tmp.path().join("spool")).unwrap());
        let mut s = sink(&dir, 10, 100);
        s.write(b"abc").unwrap();
        match s.finish(b"de".to_vec()).unwrap() {
            Output::Memory { bytes, blob } => {
                assert_eq!(bytes, b"abcde");
                assert!(blob.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(tmp.path().join("spool")).unwrap().count(),
            0
        );
    }

    #[test]
    fn large_output_spills_hashes_and_is_removed_with_its_last_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(SpoolDir::open(&tmp.path().join("spool")).unwrap());
        let mut s = sink(&dir, 10, 1000);
        let mut expected = Vec::new();
        for i in 0..30u8 {
            let piece = vec![i; 7];
            s.write(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        expected.extend_from_slice(b"tail");
        let Output::Spooled(spool) = s.finish(b"tail".to_vec()).unwrap() else {
            panic!("should spill")
        };
        assert_eq!(spool.blob(), BlobRef::of(&expected));
        assert_eq!(collect(&spool, 16), expected);
        let copy = spool.clone();
        drop(spool);
        assert_eq!(collect(&copy, 1000), expected, "a clone keeps the file");
        drop(copy);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("spool")).unwrap().count(),
            0
        );
    }

    #[test]
    fn over_the_limit_is_refused_and_an_unfinished_spill_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(SpoolDir::open(&tmp.path().join("spool")).unwrap());
        let mut s = sink(&dir, 4, 10 << 20);
        s.write(&[1; 8]).unwrap();
        assert_eq!(
            std::fs::read_dir(tmp.path().join("spool")).unwrap().count(),
            1
        );
        let e = s.write(&vec![0; 10 << 20]).unwrap_err();
        assert!(e.contains("limit of 10 MiB"), "{e}");
        drop(s);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("spool")).unwrap().count(),
            0
        );
    }

    #[test]
    fn opening_clears_files_of_an_earlier_run() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("spool");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("output-0"), b"left by a crash").unwrap();
        SpoolDir::open(&path).unwrap();
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
    }
}
