//! Every raw dataset reader (RecBole atomic files, GroupLens MovieLens-100k and -1M, Amazon
//! 2018 and 2023) and the HDF5 store against corrupted files: truncated at every byte,
//! wrong delimiters, missing columns, bad UTF-8, non-numeric and non-finite ratings,
//! duplicate ids, empty files, random byte damage; stores truncated, from another program
//! or schema version, and writers that fail half way. Each case must end without a panic:
//! read fine (when the damage leaves a well-formed file), or an error that names the file
//! and the line (`u.data:7: ...`) or the store and its attribute; a failed store write
//! leaves nothing behind. Files the damage leaves readable are prepared too (no panic).
//!
//! Per-dataset corruption of a prepared store (every HDF5 dataset deleted, cut short,
//! retyped, out of range) is in `tools/tests/corrupt_store.rs`, which loads the whole
//! store (data and models).
//!
//! Case counts are printed (`cargo test -p datasets --test corrupt_inputs -- --nocapture`).

use datasets::store::{read_prepared, write_prepared, Reader, Writer};
use datasets::{prepare, read_raw, PrepareConfig, Prepared, RawDataset};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(format!(
            "target/test-scratch/corrupt-{name}-{}",
            std::process::id()
        ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// `n_users` users rating `per_user` of `n_items` items, one a day.
/// (user, item, rating, timestamp).
type Rating = (usize, usize, u8, i64);

fn ratings(n_users: usize, per_user: usize, n_items: usize) -> Vec<Rating> {
    let mut v = Vec::new();
    for u in 1..=n_users {
        for k in 0..per_user {
            let item = (u * 7 + k * 3) % n_items + 1;
            v.push((
                u,
                item,
                ((u + k) % 5 + 1) as u8,
                978_300_000 + (k as i64) * 86_400 + u as i64,
            ));
        }
    }
    v.sort();
    v.dedup_by_key(|r| (r.0, r.1));
    v
}

/// How a file's rows are laid out.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Delimited text: the separator, whether line 1 is a header, the rating's column.
    Delimited {
        sep: &'static str,
        header: bool,
        rating: Option<usize>,
    },
    /// JSON lines: the rating's key, the id's key (metadata).
    Json {
        rating: Option<&'static str>,
        id: Option<&'static str>,
    },
}

struct File {
    name: &'static str,
    bytes: Vec<u8>,
    layout: Layout,
    /// The file must be UTF-8 (MovieLens GroupLens files are latin-1: any byte is a char).
    utf8: bool,
    /// A metadata file whose ids must be unique (MovieLens, RecBole); Amazon metadata keeps
    /// the first of repeated products.
    unique_ids: bool,
}

struct Fixture {
    dataset: &'static str,
    files: Vec<File>,
}

fn delimited(sep: &'static str, header: bool, rating: Option<usize>) -> Layout {
    Layout::Delimited {
        sep,
        header,
        rating,
    }
}

fn fixtures() -> Vec<Fixture> {
    let r = ratings(10, 8, 30);
    let lines = |f: &dyn Fn(&Rating) -> String| -> Vec<u8> {
        r.iter().map(f).collect::<String>().into_bytes()
    };
    let flags = |g: usize| {
        (0..19)
            .map(|k| if k == g { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join("|")
    };
    let recbole = Fixture {
        dataset: "ml-100k",
        files: vec![
            File {
                name: "ml-100k.inter",
                bytes: [
                    b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n".to_vec(),
                    lines(&|(u, i, s, t)| format!("{u}\t{i}\t{s}\t{t}\n")),
                ]
                .concat(),
                layout: delimited("\t", true, Some(2)),
                utf8: true,
                unique_ids: false,
            },
            File {
                name: "ml-100k.item",
                bytes: (std::iter::once(
                    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                        .to_string(),
                )
                .chain((1..=30).map(|i| format!("{i}\tFilm {i}\t199{}\tDrama Comedy\n", i % 10)))
                .collect::<String>())
                .into_bytes(),
                layout: delimited("\t", true, None),
                utf8: true,
                unique_ids: true,
            },
            File {
                name: "ml-100k.user",
                bytes: (std::iter::once(
                    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                        .to_string(),
                )
                .chain((1..=10).map(|u| format!("{u}\t24\tM\twriter\t85711\n")))
                .collect::<String>())
                .into_bytes(),
                layout: delimited("\t", true, None),
                utf8: true,
                unique_ids: true,
            },
            File {
                name: "ml-100k.kg",
                bytes: (std::iter::once(
                    "head_id:token\trelation_id:token\ttail_id:token\n".into(),
                )
                .chain((1..=30).map(|i| format!("m.{i}\tfilm.film.directed_by\tm.d{}\n", i % 4)))
                .collect::<String>())
                .into_bytes(),
                layout: delimited("\t", true, None),
                utf8: true,
                unique_ids: false,
            },
            File {
                name: "ml-100k.link",
                bytes: (std::iter::once("item_id:token\tentity_id:token\n".into())
                    .chain((1..=30).map(|i| format!("{i}\tm.{i}\n")))
                    .collect::<String>())
                .into_bytes(),
                layout: delimited("\t", true, None),
                utf8: true,
                unique_ids: false,
            },
        ],
    };
    let grouplens = Fixture {
        dataset: "ml-100k",
        files: vec![
            File {
                name: "u.data",
                bytes: lines(&|(u, i, s, t)| format!("{u}\t{i}\t{s}\t{t}\n")),
                layout: delimited("\t", false, Some(2)),
                utf8: false,
                unique_ids: false,
            },
            File {
                name: "u.item",
                bytes: (1..=30)
                    .map(|i| {
                        format!(
                            "{i}|Film {i} (1995)|01-Jan-1995||http://x|{}\n",
                            flags(i % 19)
                        )
                    })
                    .collect::<String>()
                    .into_bytes(),
                layout: delimited("|", false, None),
                utf8: false,
                unique_ids: true,
            },
            File {
                name: "u.user",
                bytes: (1..=10)
                    .map(|u| format!("{u}|24|M|technician|85711\n"))
                    .collect::<String>()
                    .into_bytes(),
                layout: delimited("|", false, None),
                utf8: false,
                unique_ids: true,
            },
        ],
    };
    let ml1m = Fixture {
        dataset: "ml-1m",
        files: vec![
            File {
                name: "ratings.dat",
                bytes: lines(&|(u, i, s, t)| format!("{u}::{i}::{s}::{t}\n")),
                layout: delimited("::", false, Some(2)),
                utf8: false,
                unique_ids: false,
            },
            File {
                name: "movies.dat",
                bytes: (1..=30)
                    .map(|i| format!("{i}::Movie {i} (199{})::Comedy|Drama\n", i % 10))
                    .collect::<String>()
                    .into_bytes(),
                layout: delimited("::", false, None),
                utf8: false,
                unique_ids: true,
            },
            File {
                name: "users.dat",
                bytes: (1..=10)
                    .map(|u| format!("{u}::F::25::{}::55455\n", u % 21))
                    .collect::<String>()
                    .into_bytes(),
                layout: delimited("::", false, None),
                utf8: false,
                unique_ids: true,
            },
        ],
    };
    let amazon2018 = Fixture {
        dataset: "amazon2018",
        files: vec![
            File {
                name: "CDs_5.json",
                bytes: lines(&|(u, i, s, t)| format!("{{\"overall\": {s}.0, \"reviewerID\": \"A{u}\", \"asin\": \"B{i:04}\", \"unixReviewTime\": {t}}}\n")),
                layout: Layout::Json { rating: Some("overall"), id: None },
                utf8: true,
                unique_ids: false,
            },
            File {
                name: "meta_CDs.json",
                bytes: (1..=30)
                    .map(|i| format!("{{\"asin\": \"B{i:04}\", \"title\": \"Album {i}\", \"brand\": \"Band\", \"category\": [\"Rock\"], \"price\": \"$1{i}.99\", \"also_buy\": [\"B0001\"]}}\n"))
                    .collect::<String>()
                    .into_bytes(),
                layout: Layout::Json { rating: None, id: Some("asin") },
                utf8: true,
                unique_ids: false,
            },
        ],
    };
    let amazon2023 = Fixture {
        dataset: "amazon2023",
        files: vec![
            File {
                name: "CDs.jsonl",
                bytes: lines(&|(u, i, s, t)| format!("{{\"rating\": {s}.0, \"user_id\": \"U{u}\", \"parent_asin\": \"P{i}\", \"timestamp\": {}}}\n", t * 1000)),
                layout: Layout::Json { rating: Some("rating"), id: None },
                utf8: true,
                unique_ids: false,
            },
            File {
                name: "meta_CDs.jsonl",
                bytes: (1..=30)
                    .map(|i| format!("{{\"parent_asin\": \"P{i}\", \"title\": \"Record {i}\", \"store\": \"Label\", \"categories\": [\"Jazz\"], \"price\": {i}.5, \"details\": {{\"Date First Available\": \"March 2, 1999\"}}}}\n"))
                    .collect::<String>()
                    .into_bytes(),
                layout: Layout::Json { rating: None, id: Some("parent_asin") },
                utf8: true,
                unique_ids: false,
            },
        ],
    };
    vec![recbole, grouplens, ml1m, amazon2018, amazon2023]
}

/// A fixture written out once; `read_with` swaps one file's bytes in, reads, and puts the
/// good bytes back.
struct Written<'f> {
    fx: &'f Fixture,
    dir: PathBuf,
}

impl<'f> Written<'f> {
    fn new(fx: &'f Fixture, tag: &str) -> Self {
        let dir = scratch(tag);
        for f in &fx.files {
            std::fs::write(dir.join(f.name), &f.bytes).expect("writing a fixture");
        }
        Self { fx, dir }
    }

    fn read_with(&self, file: usize, bytes: &[u8]) -> anyhow::Result<RawDataset> {
        let f = &self.fx.files[file];
        std::fs::write(self.dir.join(f.name), bytes).expect("writing a corrupted file");
        let out = read_raw(self.fx.dataset, Some(&self.dir));
        std::fs::write(self.dir.join(f.name), &f.bytes).expect("restoring a file");
        out
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

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

// ---------------------------------------------------------------------------------------
// The HDF5 store: whole-file damage, other formats and schema versions, failed writes.

/// `tag` names the scratch copy of the source files: tests run in parallel, and two of
/// them sharing one directory delete it under each other.
fn small_prepared(tag: &str) -> Prepared {
    let fx = fixtures();
    let w = Written::new(&fx[1], &format!("{tag}-src"));
    let raw = read_raw("ml-100k", Some(&w.dir)).expect("the GroupLens fixture reads");
    prepare(
        &raw,
        &PrepareConfig {
            subset_users: 3,
            ..PrepareConfig::new("ml-100k", 1)
        },
    )
    .expect("the GroupLens fixture prepares")
}

fn write_store(path: &Path, p: &Prepared) {
    let w = Writer::create(path).expect("creating a store");
    write_prepared(&w, p).expect("writing a store");
    w.finish().expect("finishing a store");
}

fn open_and_read(path: &Path) -> anyhow::Result<Prepared> {
    read_prepared(&Reader::open(path)?)
}

/// Files in `dir` other than `keep`.
fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("listing")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn damaged_and_foreign_stores_are_refused_naming_the_file() {
    let started = std::time::Instant::now();
    let dir = scratch("store");
    let p = small_prepared("store");
    let good = dir.join("good.h5");
    write_store(&good, &p);
    assert_eq!(open_and_read(&good).expect("a good store reads"), p);
    let bytes = std::fs::read(&good).expect("reading the store");
    let bad = dir.join("bad.h5");
    let shown = bad.display().to_string();
    let mut cases = 0;
    let refuse = |bytes: &[u8], what: &str| -> String {
        std::fs::write(&bad, bytes).expect("writing");
        let msg = match open_and_read(&bad) {
            Ok(_) => panic!("{what} was read as a store"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains(&shown), "{what}: {msg}");
        msg
    };
    // Truncated anywhere: HDF5 finds its superblock or tables cut short.
    let step = (bytes.len() / 400).max(1);
    for cut in (0..bytes.len()).step_by(step) {
        refuse(&bytes[..cut], &format!("cut at {cut} of {}", bytes.len()));
        cases += 1;
    }
    // Not HDF5: empty, text, JSON lines, another binary format.
    for (what, b) in [
        ("an empty file", Vec::new()),
        ("a ratings file", b"1\t2\t3\t4\n".to_vec()),
        ("JSON", b"{\"schema_version\": 2}".to_vec()),
        (
            "safetensors",
            [&8u64.to_le_bytes()[..], b"{}      "].concat(),
        ),
        ("zeros", vec![0u8; 4096]),
    ] {
        refuse(&b, what);
        cases += 1;
    }
    // HDF5 from another program or another schema version.
    let h5 = |attrs: &[(&str, &str)], with_data: bool| {
        let _ = std::fs::remove_file(&bad);
        if with_data {
            std::fs::copy(&good, &bad).expect("copy");
        }
        let f = if with_data {
            hdf5::File::open_rw(&bad)
        } else {
            hdf5::File::create(&bad)
        }
        .expect("hdf5");
        if !with_data {
            f.new_dataset_builder()
                .with_data(&[1.0f64, 2.0])
                .create("data")
                .expect("dataset");
        }
        for (name, value) in attrs {
            if f.attr(name).is_ok() {
                f.delete_attr(name).expect("delete attr");
            }
            if !value.is_empty() {
                let v: hdf5::types::VarLenUnicode = value.parse().expect("unicode");
                f.new_attr::<hdf5::types::VarLenUnicode>()
                    .create(*name)
                    .and_then(|a| a.write_scalar(&v))
                    .expect("attr");
            }
        }
    };
    for (what, attrs, with_data, expect) in [
        ("another program's HDF5", vec![], false, "schema_version"),
        (
            "schema version 1",
            vec![("schema_version", "1")],
            true,
            "schema version 1",
        ),
        (
            "schema version 3",
            vec![("schema_version", "3")],
            true,
            "schema version 3",
        ),
        (
            "schema version `two`",
            vec![("schema_version", "two")],
            true,
            "schema_version",
        ),
        (
            "no schema version",
            vec![("schema_version", "")],
            true,
            "schema_version",
        ),
        ("no config", vec![("config", "")], true, "config"),
        (
            "a garbled config",
            vec![("config", "{\"dataset\": 5")],
            true,
            "config",
        ),
        (
            "a config with 0 candidates",
            vec![(
                "config",
                &serde_json::to_string(&PrepareConfig {
                    candidates: 0,
                    ..p.config.clone()
                })
                .expect("json") as &str,
            )],
            true,
            "candidates",
        ),
    ] {
        h5(&attrs, with_data);
        let msg = match open_and_read(&bad) {
            Ok(_) => panic!("{what} was read as a store"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            msg.contains(&shown) && msg.contains(expect),
            "{what}: {msg}"
        );
        cases += 1;
    }
    assert!(strays(&dir, &["good.h5", "bad.h5"]).is_empty());
    eprintln!(
        "corrupt_inputs: {cases} damaged or foreign stores refused naming the file in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A store write that fails half way (an error before `finish`) leaves neither the output
/// nor a temporary file; an older store at the output path stays as it was.
#[test]
fn a_failed_store_write_leaves_nothing_behind() {
    let dir = scratch("writer");
    let p = small_prepared("writer");
    let out = dir.join("out.h5");
    {
        let w = Writer::create(&out).expect("create");
        write_prepared(&w, &p).expect("write");
        // Writing a dataset twice fails, as a real write error would, and the writer is
        // dropped with the error.
        assert!(w.put("events/item", &[1u32]).is_err());
    }
    assert!(
        strays(&dir, &[]).is_empty(),
        "left: {:?}",
        strays(&dir, &[])
    );
    // Over an existing store: the old one stays readable and unchanged.
    write_store(&out, &p);
    let before = std::fs::read(&out).expect("read");
    {
        let w = Writer::create(&out).expect("create");
        w.put_attr("schema_version", "2").expect("attr");
    }
    assert_eq!(std::fs::read(&out).expect("read"), before);
    assert_eq!(open_and_read(&out).expect("still a store"), p);
    assert_eq!(strays(&dir, &["out.h5"]), Vec::<String>::new());
    eprintln!("corrupt_inputs: 2 interrupted store writes left nothing behind");
}
