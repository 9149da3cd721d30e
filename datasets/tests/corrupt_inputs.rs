//! Every raw dataset reader (RecBole atomic files, GroupLens MovieLens-100k and -1M, Amazon
//! 2018 and 2023) and the HDF5 store against corrupted files: truncated at every byte,
//! wrong delimiters, missing columns, bad UTF-8, non-numeric and non-finite ratings,
//! duplicate ids, empty files, random byte damage; stores truncated, from another program
//! or schema version, and writers that fail half way. Each case must end without a panic:
//! read fine (when the damage leaves a well-formed file), or an error that names the file
//! and the line (`u.data:7: ...`) or the store and its attribute; a failed store write
//! leaves nothing behind. Files the damage leaves readable are prepared too (no panic).
//!
//! The store's whole-file damage is in `corrupt_store_files.rs`; the fixtures both use are in
//! `corrupt/mod.rs`. Per-dataset corruption of a prepared store (every HDF5 dataset deleted, cut short,
//! retyped, out of range) is in `tools/tests/corrupt_store.rs`, which loads the whole
//! store (data and models).
//!
//! Case counts are printed (`cargo test -p datasets --test corrupt_inputs -- --nocapture`).

mod corrupt;

use corrupt::*;
use datasets::{prepare, PrepareConfig, RawDataset};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// The line an error names for `file` (`name:LINE:` in the message), if any.
fn named_line(msg: &str, file: &str) -> Option<usize> {
    msg.match_indices(&format!("{file}:")).find_map(|(p, m)| {
        let rest = &msg[p + m.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// A read of a damaged file: fine, or an error naming that file and a line; what reads
/// fine prepares without a panic.
fn check_read(
    out: anyhow::Result<RawDataset>,
    file: &str,
    dataset: &str,
) -> Result<Option<usize>, String> {
    match out {
        Ok(raw) => {
            let cfg = PrepareConfig {
                subset_users: 3,
                k_core: 0,
                min_user_interactions: 3,
                ..PrepareConfig::new(dataset, 1)
            };
            let _ = prepare(&raw, &cfg);
            Ok(None)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            match named_line(&msg, file) {
                Some(line) => Ok(Some(line)),
                None => Err(format!("error does not name {file}:LINE: {msg}")),
            }
        }
    }
}

/// The error a damaged file must give, naming it and `line`.
fn expect_error(w: &Written, file: usize, bytes: &[u8], line: usize, what: &str) -> String {
    let f = &w.fx.files[file];
    let out = w.read_with(file, bytes);
    let msg = match &out {
        Ok(_) => panic!("{} {}: {what} was accepted", w.fx.dataset, f.name),
        Err(e) => format!("{e:#}"),
    };
    assert_eq!(
        named_line(&msg, f.name),
        Some(line),
        "{} {}: {what}: {msg}",
        w.fx.dataset,
        f.name
    );
    msg
}

fn text_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect()
}

/// Line `k` (0-based among non-empty lines) of a file, changed by `f`.
fn with_line(bytes: &[u8], k: usize, f: impl Fn(&str) -> String) -> Vec<u8> {
    let mut lines = text_lines(bytes);
    lines[k] = f(&String::from_utf8_lossy(&lines[k])).into_bytes();
    join_lines(&lines)
}

/// Every reader on its files cut at every byte: read fine or named file and line; never a
/// panic.
#[test]
fn truncated_at_every_byte() {
    let started = std::time::Instant::now();
    let mut cases = 0;
    let mut refused = 0;
    for (n, fx) in fixtures().iter().enumerate() {
        let w = Written::new(fx, &format!("trunc{n}"));
        for (k, f) in fx.files.iter().enumerate() {
            // Every byte of the first line and around every line break (where a cut can
            // still leave a well-formed file), every few bytes elsewhere.
            let step = (f.bytes.len() / 300).max(1);
            let near_break = |c: usize| {
                f.bytes[c.saturating_sub(2)..(c + 3).min(f.bytes.len())].contains(&b'\n')
            };
            let first_line = f.bytes.iter().position(|&b| b == b'\n').unwrap_or(0);
            for cut in
                (0..f.bytes.len()).filter(|&c| c <= first_line || near_break(c) || c % step == 0)
            {
                let out = w.read_with(k, &f.bytes[..cut]);
                match check_read(out, f.name, fx.dataset) {
                    Ok(Some(_)) => refused += 1,
                    Ok(None) => {}
                    Err(e) => panic!("{} cut at {cut}: {e}", fx.dataset),
                }
                cases += 1;
            }
            // Cut to nothing (or only blank lines): an empty file, an error on line 1.
            for empty in [&b""[..], b"\n\n", b"\r\n"] {
                let msg = expect_error(&w, k, empty, 1, "an empty file");
                assert!(msg.contains("empty"), "{msg}");
                cases += 1;
            }
        }
    }
    eprintln!(
        "corrupt_inputs: {cases} truncated or empty files ({refused} refused with file:line, \
         the rest still well formed, and prepared) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Wrong delimiters, missing columns, bad UTF-8, non-numeric ratings and duplicate ids:
/// each an error naming the file and the line.
#[test]
fn malformed_rows_name_file_and_line() {
    let started = std::time::Instant::now();
    let mut cases = 0;
    for (n, fx) in fixtures().iter().enumerate() {
        let w = Written::new(fx, &format!("rows{n}"));
        for (k, f) in fx.files.iter().enumerate() {
            let lines = text_lines(&f.bytes);
            let h = usize::from(matches!(f.layout, Layout::Delimited { header: true, .. }));
            // Line indices (0-based) of the first, a middle and the last data row.
            let probe = [h, h + (lines.len() - h) / 2, lines.len() - 1];
            match f.layout {
                Layout::Delimited {
                    sep,
                    header,
                    rating,
                } => {
                    // The whole file with another delimiter.
                    for other in [",", ";", " "] {
                        if other == sep {
                            continue;
                        }
                        let bytes = String::from_utf8_lossy(&f.bytes)
                            .replace(sep, other)
                            .into_bytes();
                        expect_error(&w, k, &bytes, 1, "another delimiter");
                        cases += 1;
                    }
                    // One row with another delimiter, or its last column missing.
                    for &line in &probe[..] {
                        let bytes = with_line(&f.bytes, line, |l| l.replace(sep, ","));
                        expect_error(&w, k, &bytes, line + 1, "a row with commas");
                        let bytes = with_line(&f.bytes, line, |l| {
                            let mut p: Vec<&str> = l.split(sep).collect();
                            p.pop();
                            // MovieLens rows may carry extra trailing fields; drop to the
                            // minimum minus one.
                            p.truncate(p.len().min(match f.name {
                                "u.item" => 23,
                                "u.user" | "users.dat" => 4,
                                "movies.dat" => 2,
                                "u.data" | "ratings.dat" => 3,
                                _ => p.len(),
                            }));
                            p.join(sep)
                        });
                        expect_error(&w, k, &bytes, line + 1, "a row missing a column");
                        cases += 2;
                    }
                    if header {
                        // A column the reader needs, missing from the header and every row.
                        let col = usize::from(!f.name.ends_with(".user"));
                        let ls: Vec<Vec<u8>> = lines
                            .iter()
                            .map(|l| {
                                let l = String::from_utf8_lossy(l);
                                let mut p: Vec<&str> = l.split(sep).collect();
                                p.remove(col);
                                p.join(sep).into_bytes()
                            })
                            .collect();
                        expect_error(&w, k, &join_lines(&ls), 1, "a missing column");
                        cases += 1;
                    }
                    if let Some(col) = rating {
                        for &line in &probe[..] {
                            for bad in [
                                "x", "", "nan", "NaN", "inf", "-inf", "1e400", "4,5", "٣",
                                "5 stars",
                            ] {
                                let bytes = with_line(&f.bytes, line, |l| {
                                    let mut p: Vec<String> =
                                        l.split(sep).map(str::to_string).collect();
                                    p[col] = bad.to_string();
                                    p.join(sep)
                                });
                                let msg = expect_error(
                                    &w,
                                    k,
                                    &bytes,
                                    line + 1,
                                    &format!("rating {bad:?}"),
                                );
                                assert!(msg.contains("rating"), "{msg}");
                                cases += 1;
                            }
                        }
                    }
                }
                Layout::Json { rating, id } => {
                    // Not JSON lines at all (CSV), and one row cut short.
                    let csv = String::from_utf8_lossy(&f.bytes)
                        .replace(['{', '}', '"'], "")
                        .into_bytes();
                    expect_error(&w, k, &csv, 1, "CSV instead of JSON lines");
                    cases += 1;
                    for &i in &probe[..] {
                        let bytes = with_line(&f.bytes, i, |l| l[..l.len() / 2].to_string());
                        expect_error(&w, k, &bytes, i + 1, "a row cut short");
                        // Deeply nested JSON past the parser's recursion limit.
                        let bytes = with_line(&f.bytes, i, |_| "[".repeat(5000));
                        expect_error(&w, k, &bytes, i + 1, "deep nesting");
                        cases += 2;
                        if let Some(key) = rating.or(id) {
                            // The field a row needs, missing.
                            let bytes = with_line(&f.bytes, i, |l| {
                                l.replace(&format!("\"{key}\""), "\"renamed\"")
                            });
                            expect_error(&w, k, &bytes, i + 1, &format!("no `{key}`"));
                            cases += 1;
                        }
                        if let Some(key) = rating {
                            for bad in [
                                "\"x\"", "\"NaN\"", "\"inf\"", "1e400", "true", "null", "[5]",
                            ] {
                                let bytes = with_line(&f.bytes, i, |l| {
                                    let v: serde_json::Value =
                                        serde_json::from_str(l).expect("fixture JSON");
                                    let mut s = v.to_string();
                                    let old = format!("\"{key}\":{}", v[key]);
                                    s = s.replace(&old, &format!("\"{key}\":{bad}"));
                                    s
                                });
                                expect_error(&w, k, &bytes, i + 1, &format!("{key} = {bad}"));
                                cases += 1;
                            }
                        }
                    }
                }
            }
            // Bad UTF-8 in a row: an error on that line where the format is UTF-8; latin-1
            // MovieLens files read every byte as a character.
            for &i in &probe[..] {
                let mut ls = lines.clone();
                let mid = ls[i].len() / 2;
                ls[i].splice(mid..mid, [0xff, 0xfe, 0xc3]);
                let bytes = join_lines(&ls);
                if f.utf8 {
                    let msg = expect_error(&w, k, &bytes, i + 1, "bad UTF-8");
                    assert!(msg.contains("UTF-8"), "{msg}");
                } else {
                    check_read(w.read_with(k, &bytes), f.name, fx.dataset)
                        .unwrap_or_else(|e| panic!("latin-1 {}: {e}", f.name));
                }
                cases += 1;
            }
            // Duplicate ids: refused in MovieLens/RecBole metadata, naming both lines;
            // repeated ratings are re-ratings; repeated Amazon products keep the first.
            let dup_of = h + 1;
            let mut ls = lines.clone();
            let copy = String::from_utf8_lossy(&ls[dup_of])
                .replacen("Film", "Other", 1)
                .replacen("Movie", "Other", 1)
                .replacen("Album", "Other", 1)
                .replacen("Record", "Other", 1)
                .into_bytes();
            ls.push(copy);
            let bytes = join_lines(&ls);
            if f.unique_ids {
                let msg = expect_error(&w, k, &bytes, ls.len(), "a duplicate id");
                assert!(
                    msg.contains("duplicate id") && msg.contains(&format!("line {}", dup_of + 1)),
                    "{msg}"
                );
            } else {
                let raw = w
                    .read_with(k, &bytes)
                    .unwrap_or_else(|e| panic!("{}: a repeated row: {e:#}", f.name));
                if let Layout::Json { id: Some(_), .. } = f.layout {
                    assert!(
                        raw.items.values().all(|m| !m.title.starts_with("Other")),
                        "the first entry of a repeated product counts"
                    );
                }
            }
            cases += 1;
        }
    }
    eprintln!(
        "corrupt_inputs: {cases} malformed files (delimiters, columns, UTF-8, ratings, \
         duplicate ids) named file:line in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Random damage (bytes flipped, inserted or deleted, lines repeated or dropped): read fine
/// or an error naming the damaged file and a line; what reads fine prepares; never a panic.
#[test]
fn random_damage_never_panics() {
    let started = std::time::Instant::now();
    let fxs = fixtures();
    let written: Vec<Written> = fxs
        .iter()
        .enumerate()
        .map(|(n, fx)| Written::new(fx, &format!("rand{n}")))
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: 4_000,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(14),
        ..Config::default()
    });
    let damage = (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::collection::vec(
            (
                0u8..5,
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 1..8),
            ),
            1..4,
        ),
    );
    let refused = std::cell::Cell::new(0usize);
    runner
        .run(&damage, |(fx, file, edits)| {
            let w = &written[fx.index(written.len())];
            let k = file.index(w.fx.files.len());
            let f = &w.fx.files[k];
            let mut bytes = f.bytes.clone();
            for (op, at, junk) in edits {
                let p = at.index(bytes.len() + 1);
                match op {
                    0 => {
                        if p < bytes.len() {
                            bytes[p] ^= junk[0] | 1;
                        }
                    }
                    1 => {
                        bytes.splice(p..p, junk);
                    }
                    2 => {
                        let end = (p + junk.len() * 7).min(bytes.len());
                        bytes.drain(p..end);
                    }
                    3 => {
                        let mut ls = text_lines(&bytes);
                        if !ls.is_empty() {
                            let i = p % ls.len();
                            let l = ls[i].clone();
                            ls.insert(i, l);
                        }
                        bytes = join_lines(&ls);
                    }
                    _ => {
                        let mut ls = text_lines(&bytes);
                        if !ls.is_empty() {
                            ls.remove(p % ls.len());
                        }
                        bytes = join_lines(&ls);
                    }
                }
            }
            match check_read(w.read_with(k, &bytes), f.name, w.fx.dataset) {
                Ok(Some(_)) => refused.set(refused.get() + 1),
                Ok(None) => {}
                Err(e) => return Err(TestCaseError::fail(e)),
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "corrupt_inputs: {} randomly damaged files ({} refused with file:line) in {:.1}s",
        runner.config().cases,
        refused.get(),
        started.elapsed().as_secs_f64()
    );
}
