//! Crash-safe writes: a file or a whole directory is written beside its destination under a
//! temporary name, synced, then renamed over it, so a crash leaves either the old contents
//! or the new ones, never torn ones.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (see `write_atomic_with`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// Streams a file into place: `write` fills a buffered temporary file beside `path`, which
/// is flushed, synced and renamed over `path`. On an error the temporary file is removed
/// and `path` is left as it was.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let tmp = temporary(path, true)?;
    let written = (|| -> Result<()> {
        let mut w = BufWriter::new(
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        write(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path);
    Ok(())
}

/// Writes a directory into place: `fill` populates an empty temporary directory beside
/// `path` (created along with missing parents), which then replaces `path`. A leftover
/// temporary directory from a killed writer is cleared first; one writer per `path`. On an
/// error the temporary directory is removed and `path` is left as it was.
pub fn write_dir_atomic(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary(path, false)?;
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(path);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path);
    Ok(())
}

/// `.NAME.tmp` beside `path`, with the process id appended when `per_process`.
fn temporary(path: &Path, per_process: bool) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?
        .to_string_lossy();
    let tmp = if per_process {
        format!(".{name}.tmp.{}", std::process::id())
    } else {
        format!(".{name}.tmp")
    };
    Ok(path.with_file_name(tmp))
}

/// Syncs the directory holding `path`, so its rename survives a crash (best effort).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lm-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn files_are_replaced_whole_or_not_at_all() {
        let d = scratch("file");
        let p = d.join("out.jsonl");
        write_atomic(&p, b"old\n").unwrap();
        let failed = write_atomic_with(&p, |w| {
            w.write_all(b"half")?;
            anyhow::bail!("teacher died")
        });
        assert!(format!("{:#}", failed.unwrap_err()).contains("teacher died"));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        write_atomic_with(&p, |w| Ok(writeln!(w, "a")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\n");
        assert_eq!(names(&d), ["out.jsonl"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn directories_are_replaced_whole_or_not_at_all() {
        let d = scratch("dir");
        let p = d.join("nested/step-000001");
        write_dir_atomic(&p, |tmp| write_atomic(&tmp.join("a"), b"1")).unwrap();
        let failed = write_dir_atomic(&p, |tmp| {
            write_atomic(&tmp.join("b"), b"2")?;
            anyhow::bail!("disk full")
        });
        assert!(failed.is_err());
        assert_eq!(names(&p), ["a"]);
        // A temporary directory left by a killed writer is cleared.
        std::fs::create_dir_all(d.join("nested/.step-000001.tmp/junk")).unwrap();
        write_dir_atomic(&p, |tmp| write_atomic(&tmp.join("b"), b"2")).unwrap();
        assert_eq!(names(&p), ["b"]);
        assert_eq!(names(&d.join("nested")), ["step-000001"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
