//! The original GroupLens files: MovieLens-100k (`u.data u.item u.user`) and MovieLens-1M
//! (`ratings.dat movies.dat users.dat`, `::`-separated, latin-1).

use super::{first_time, parse, parse_finite, read_bytes, require_rows};
use crate::raw::{latin1, split_title_year, Interaction, ItemMeta, RawDataset, UserMeta};
use anyhow::{bail, Result};
use std::path::Path;

/// The 19 genre flags of u.item, in file order (u.genre).
const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// ML-1M `users.dat` occupation codes (from the dataset README).
const ML1M_OCCUPATIONS: [&str; 21] = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
];

/// Lines of a latin-1 file, split on `sep`, each checked for `n` fields.
fn rows(path: &Path, sep: &str, n: usize) -> Result<Vec<(usize, Vec<String>)>> {
    let text = latin1(&read_bytes(path)?);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let f: Vec<String> = line.split(sep).map(str::to_string).collect();
        if f.len() < n {
            bail!(
                "{}:{}: expected {n} `{}`-separated fields, found {}",
                path.display(),
                i + 1,
                sep.escape_default(),
                f.len()
            );
        }
        out.push((i + 1, f));
    }
    require_rows(out.len(), path, 1)?;
    Ok(out)
}

/// `user, item, rating, timestamp` rows (u.data, ratings.dat) as interactions.
fn read_ratings(path: &Path, sep: &str) -> Result<Vec<Interaction>> {
    rows(path, sep, 4)?
        .into_iter()
        .map(|(line, f)| {
            Ok(Interaction {
                user: f[0].clone(),
                item: f[1].clone(),
                rating: parse_finite(&f[2], "rating", path, line)?,
                timestamp: parse(&f[3], "timestamp", path, line)?,
            })
        })
        .collect()
}

pub fn read_ml100k(dir: &Path) -> Result<RawDataset> {
    let mut ds = RawDataset {
        name: "ml-100k".into(),
        ..Default::default()
    };
    ds.interactions = read_ratings(&dir.join("u.data"), "\t")?;
    let item = dir.join("u.item");
    if item.exists() {
        let mut seen = std::collections::HashMap::new();
        for (line, f) in rows(&item, "|", 5 + ML100K_GENRES.len())? {
            first_time(&mut seen, &f[0], &item, line)?;
            let (title, year) = split_title_year(&f[1]);
            let mut categories = Vec::new();
            for (g, flag) in ML100K_GENRES.iter().zip(&f[5..]) {
                match parse::<u8>(flag, "genre flag", &item, line)? {
                    0 => {}
                    1 => categories.push(g.to_string()),
                    other => bail!(
                        "{}:{line}: genre flag {other} for {g}: expected 0 or 1",
                        item.display()
                    ),
                }
            }
            ds.items.insert(
                f[0].clone(),
                ItemMeta {
                    title,
                    year,
                    categories,
                    ..Default::default()
                },
            );
        }
    }
    let user = dir.join("u.user");
    if user.exists() {
        let mut seen = std::collections::HashMap::new();
        for (line, f) in rows(&user, "|", 5)? {
            first_time(&mut seen, &f[0], &user, line)?;
            ds.users.insert(
                f[0].clone(),
                UserMeta {
                    age: Some(f[1].clone()),
                    gender: Some(f[2].clone()),
                    occupation: Some(f[3].clone()),
                    zip: Some(f[4].clone()),
                },
            );
        }
    }
    Ok(ds)
}

pub fn read_ml1m(dir: &Path) -> Result<RawDataset> {
    let mut ds = RawDataset {
        name: "ml-1m".into(),
        ..Default::default()
    };
    ds.interactions = read_ratings(&dir.join("ratings.dat"), "::")?;
    let movies = dir.join("movies.dat");
    if movies.exists() {
        let mut seen = std::collections::HashMap::new();
        for (line, f) in rows(&movies, "::", 3)? {
            first_time(&mut seen, &f[0], &movies, line)?;
            let (title, year) = split_title_year(&f[1]);
            let categories = f[2]
                .split('|')
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect();
            ds.items.insert(
                f[0].clone(),
                ItemMeta {
                    title,
                    year,
                    categories,
                    ..Default::default()
                },
            );
        }
    }
    let users = dir.join("users.dat");
    if users.exists() {
        let mut seen = std::collections::HashMap::new();
        for (line, f) in rows(&users, "::", 5)? {
            first_time(&mut seen, &f[0], &users, line)?;
            let occ: usize = parse(&f[3], "occupation", &users, line)?;
            let Some(occupation) = ML1M_OCCUPATIONS.get(occ) else {
                bail!(
                    "{}:{line}: occupation code {occ} is not in 0..=20",
                    users.display()
                );
            };
            ds.users.insert(
                f[0].clone(),
                UserMeta {
                    gender: Some(f[1].clone()),
                    age: Some(f[2].clone()),
                    occupation: Some(occupation.to_string()),
                    zip: Some(f[4].clone()),
                },
            );
        }
    }
    Ok(ds)
}
