//! Raw-dataset fixtures shared by the corruption tests (`corrupt_inputs.rs`: the readers;
//! `corrupt_store_files.rs`: the HDF5 store): every supported format as small files, written
//! to a per-process scratch directory. Each test binary uses part of it.
#![allow(dead_code)]

use datasets::{read_raw, RawDataset};
use std::path::{Path, PathBuf};

pub fn scratch(name: &str) -> PathBuf {
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
pub type Rating = (usize, usize, u8, i64);

pub fn ratings(n_users: usize, per_user: usize, n_items: usize) -> Vec<Rating> {
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
pub enum Layout {
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

pub struct File {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub layout: Layout,
    /// The file must be UTF-8 (MovieLens GroupLens files are latin-1: any byte is a char).
    pub utf8: bool,
    /// A metadata file whose ids must be unique (MovieLens, RecBole); Amazon metadata keeps
    /// the first of repeated products.
    pub unique_ids: bool,
}

pub struct Fixture {
    pub dataset: &'static str,
    pub files: Vec<File>,
}

pub fn delimited(sep: &'static str, header: bool, rating: Option<usize>) -> Layout {
    Layout::Delimited {
        sep,
        header,
        rating,
    }
}

pub fn fixtures() -> Vec<Fixture> {
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
pub struct Written<'f> {
    pub fx: &'f Fixture,
    pub dir: PathBuf,
}

impl<'f> Written<'f> {
    pub fn new(fx: &'f Fixture, tag: &str) -> Self {
        let dir = scratch(tag);
        for f in &fx.files {
            std::fs::write(dir.join(f.name), &f.bytes).expect("writing a fixture");
        }
        Self { fx, dir }
    }

    pub fn read_with(&self, file: usize, bytes: &[u8]) -> anyhow::Result<RawDataset> {
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
