//! TensorBoard event files: the run's scalars as `RUN_DIR/tb/events.out.tfevents.*`, one file
//! per process start. A file is TFRecord framing (u64 length, masked CRC-32C of the length,
//! the record, masked CRC-32C of the record; little endian) around `Event` protobufs: first
//! `file_version = "brain.Event:2"`, then one event per step whose summary holds a
//! `simple_value` per metric. The three messages are declared here with prost's derive (no
//! protoc, no .proto files): only the fields written are declared; a proto3 `oneof` member
//! is encoded like an `optional` field. A run that resumes after step k first drops the
//! events past k from earlier files, so no step appears twice, then starts a new file.

use anyhow::{bail, Context, Result};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// tensorflow/core/util/event.proto, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// In the `what` oneof.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// In the `what` oneof.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// tensorflow/core/framework/summary.proto.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// In the `value` oneof (so 0.0 is written too).
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

const PREFIX: &str = "events.out.tfevents.";

/// CRC-32C masked as TFRecord does (rotate right by 15, add a constant).
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The events of a file, checksums verified. A torn record at the end (a process killed
/// while writing) ends the list; a bad checksum before it is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let crc =
            u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        let len = u64::from_le_bytes(len_bytes.try_into()?) as usize;
        let end = (at + 12).saturating_add(len);
        if end.saturating_add(4) > bytes.len() {
            break; // torn tail
        }
        let data = &bytes[at + 12..end];
        let data_crc = u32::from_le_bytes(bytes[end..end + 4].try_into()?);
        if crc != masked_crc(len_bytes) || data_crc != masked_crc(data) {
            bail!("{}: bad checksum at byte {at}", path.display());
        }
        events.push(Event::decode(data).with_context(|| format!("{}", path.display()))?);
        at = end + 4;
    }
    Ok(events)
}

/// The event files in `dir`, sorted by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let is_events = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && !n.ends_with(".tmp"));
            if is_events {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Appends events to this process's event file.
pub struct EventWriter {
    file: std::fs::File,
    pub path: PathBuf,
}

impl EventWriter {
    /// For a run that continues after step `kept` (0: a fresh run): drops events past it from
    /// the event files in `dir` (removing files left with no scalars), then creates a new
    /// file, named after the time so it sorts after the earlier ones, with its file_version.
    pub fn start(dir: &Path, kept: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut newest = 0;
        for path in event_files(dir)? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(t) = name[PREFIX.len()..].split('.').next() {
                newest = newest.max(t.parse::<u64>().unwrap_or(0));
            }
            truncate_file(&path, kept)?;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '.'], "_"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let secs = now.as_secs().max(newest + 1);
        let path = dir.join(format!(
            "{PREFIX}{secs:010}.{host}.{}.0",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = Self { file, path };
        w.write(&Event {
            wall_time: now.as_secs_f64(),
            file_version: Some("brain.Event:2".into()),
            ..Default::default()
        })?;
        Ok(w)
    }

    /// One event at `step` with a simple value per (tag, value).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
            })
            .collect();
        self.write(&Event {
            wall_time: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64(),
            step: step as i64,
            summary: Some(Summary { value }),
            ..Default::default()
        })
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        self.file
            .write_all(&record(&event.encode_to_vec()))
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Rewrites `path` (atomically) without the events past step `kept`; removes it when no
/// scalars remain. Leaves it untouched when nothing is dropped.
fn truncate_file(path: &Path, kept: usize) -> Result<()> {
    let events = read_events(path)?;
    let n = events.len();
    let keep: Vec<Event> = events
        .into_iter()
        .filter(|e| e.summary.is_none() || e.step <= kept as i64)
        .collect();
    if keep.iter().all(|e| e.summary.is_none()) {
        return std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()));
    }
    let len_on_disk = std::fs::metadata(path)?.len() as usize;
    let bytes: Vec<u8> = keep
        .iter()
        .flat_map(|e| record(&e.encode_to_vec()))
        .collect();
    if keep.len() == n && bytes.len() == len_on_disk {
        return Ok(());
    }
    lm::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xE3069283 (the CRC-32C check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    fn events_round_trip_and_resume_drops_later_steps() {
        let dir = std::env::temp_dir().join(format!("tb-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = EventWriter::start(&dir, 0).unwrap();
        for step in 1..=3 {
            w.scalars(
                step,
                &[("loss".into(), step as f64 * 0.5), ("zero".into(), 0.0)],
            )
            .unwrap();
        }
        let first = w.path.clone();
        let ev = read_events(&first).unwrap();
        assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(ev.len(), 4);
        let v = &ev[3].summary.as_ref().unwrap().value;
        assert_eq!(
            (ev[3].step, v[0].simple_value, v[1].simple_value),
            (3, Some(1.5), Some(0.0))
        );
        // A torn last record is dropped, not an error.
        let bytes = std::fs::read(&first).unwrap();
        std::fs::write(&first, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(read_events(&first).unwrap().len(), 3);
        // Resuming after step 1 keeps step 1 in the first file and starts a second one.
        let w2 = EventWriter::start(&dir, 1).unwrap();
        assert_ne!(w2.path, first);
        let steps: Vec<i64> = read_events(&first)
            .unwrap()
            .iter()
            .map(|e| e.step)
            .collect();
        assert_eq!(steps, vec![0, 1]);
        assert_eq!(
            event_files(&dir).unwrap(),
            vec![first.clone(), w2.path.clone()]
        );
        // A fresh start removes the earlier files' scalars (and files left without any).
        let w3 = EventWriter::start(&dir, 0).unwrap();
        assert_eq!(event_files(&dir).unwrap(), vec![w3.path.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
