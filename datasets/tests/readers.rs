//! Readers on small files in the exact published formats, and preprocessing invariants.

use datasets::{prepare, read_raw, PrepareConfig, Split, Subset};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recthinker-ds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n_users` users each rating `per_user` of `n_items` items, one per day.
fn ratings(n_users: usize, per_user: usize, n_items: usize) -> Vec<(usize, usize, u8, i64)> {
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

#[test]
fn movielens_1m_dat_files() {
    let d = dir("ml1m");
    let r: String = ratings(12, 15, 40)
        .iter()
        .map(|(u, i, s, t)| format!("{u}::{i}::{s}::{t}\n"))
        .collect();
    std::fs::write(d.join("ratings.dat"), r).unwrap();
    let mut movies = Vec::new();
    for i in 1..=40 {
        movies.extend_from_slice(
            format!("{i}::Movie {i} (199{})::Comedy|Drama\n", i % 10).as_bytes(),
        );
    }
    // latin-1 title, as in the real file ("Cité" in one byte 0xE9)
    movies.extend_from_slice(b"41::La Cit\xe9 (1995)::Drama\n");
    std::fs::write(d.join("movies.dat"), movies).unwrap();
    let users: String = (1..=12)
        .map(|u| format!("{u}::F::25::{}::55455\n", u % 21))
        .collect();
    std::fs::write(d.join("users.dat"), users).unwrap();
    let raw = read_raw("ml-1m", Some(&d)).unwrap();
    assert_eq!(raw.items["41"].title, "La Cité");
    assert_eq!(raw.items["3"].year, Some(1993));
    assert_eq!(raw.items["3"].categories, vec!["Comedy", "Drama"]);
    assert_eq!(
        raw.users["4"].occupation.as_deref(),
        Some("college/grad student")
    );
    let p = prepare(
        &raw,
        &PrepareConfig {
            subset_users: 3,
            ..PrepareConfig::new("ml-1m", 1)
        },
    )
    .unwrap();
    assert_eq!(p.users.len(), 12);

    std::fs::write(
        d.join("ratings.dat"),
        "1::2::5::978300760\n1::3::x::978300761\n",
    )
    .unwrap();
    let err = format!("{:#}", read_raw("ml-1m", Some(&d)).unwrap_err());
    assert!(
        err.contains("ratings.dat:2") && err.contains("rating"),
        "{err}"
    );
}

#[test]
fn movielens_100k_grouplens_files() {
    let d = dir("ml100k");
    let r: String = ratings(6, 8, 20)
        .iter()
        .map(|(u, i, s, t)| format!("{u}\t{i}\t{s}\t{t}\n"))
        .collect();
    std::fs::write(d.join("u.data"), r).unwrap();
    let flags = |g: usize| {
        (0..19)
            .map(|k| if k == g { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join("|")
    };
    let items: String = (1..=20)
        .map(|i| {
            format!(
                "{i}|Film {i} (1995)|01-Jan-1995||http://x|{}\n",
                flags(i % 19)
            )
        })
        .collect();
    std::fs::write(d.join("u.item"), items).unwrap();
    std::fs::write(
        d.join("u.user"),
        (1..=6)
            .map(|u| format!("{u}|24|M|technician|85711\n"))
            .collect::<String>(),
    )
    .unwrap();
    let raw = read_raw("ml-100k", Some(&d)).unwrap();
    assert_eq!(raw.items["1"].categories, vec!["Action"]);
    assert_eq!(raw.users["1"].occupation.as_deref(), Some("technician"));
    std::fs::write(d.join("u.item"), "1|Broken\n").unwrap();
    let err = format!("{:#}", read_raw("ml-100k", Some(&d)).unwrap_err());
    assert!(err.contains("u.item:1"), "{err}");
}

#[test]
fn amazon_2018_and_2023_json_lines() {
    let d = dir("amz18");
    let rows = ratings(8, 9, 30);
    let reviews: String = rows.iter().map(|(u, i, s, t)| format!("{{\"overall\": {s}.0, \"verified\": true, \"reviewTime\": \"01 1, 2001\", \"reviewerID\": \"A{u}\", \"asin\": \"B{i:04}\", \"reviewText\": \"ok\", \"summary\": \"s\", \"unixReviewTime\": {t}}}\n")).collect();
    std::fs::write(d.join("CDs_and_Vinyl_5.json"), reviews).unwrap();
    let meta: String = (1..=30).map(|i| format!("{{\"asin\": \"B{i:04}\", \"title\": \"Album {i}\", \"brand\": \"Band {}\", \"category\": [\"CDs & Vinyl\", \"Rock\"], \"price\": \"$1{i}.99\", \"description\": [\"Great.\"], \"also_buy\": [\"B{:04}\"], \"also_view\": []}}\n", i % 3, i % 30 + 1)).collect();
    std::fs::write(d.join("meta_CDs_and_Vinyl.json"), meta).unwrap();
    let raw = read_raw("amazon2018", Some(&d)).unwrap();
    assert_eq!(raw.items["B0003"].brand.as_deref(), Some("Band 0"));
    assert_eq!(raw.items["B0003"].price, Some(13.99));
    assert_eq!(raw.items["B0003"].also_buy, vec!["B0004"]);
    let p = prepare(
        &raw,
        &PrepareConfig {
            k_core: 2,
            subset_users: 2,
            min_user_interactions: 3,
            ..PrepareConfig::new("amazon2018", 3)
        },
    )
    .unwrap();
    assert!(!p.test.is_empty());

    let d = dir("amz23");
    let reviews: String = rows.iter().map(|(u, i, s, t)| format!("{{\"rating\": {s}.0, \"title\": \"t\", \"text\": \"x\", \"images\": [], \"asin\": \"C{i}\", \"parent_asin\": \"P{i}\", \"user_id\": \"U{u}\", \"timestamp\": {}, \"helpful_vote\": 0, \"verified_purchase\": true}}\n", t * 1000)).collect();
    std::fs::write(d.join("CDs_and_Vinyl.jsonl"), reviews).unwrap();
    let meta: String = (1..=12).map(|i| format!("{{\"main_category\": \"Digital Music\", \"title\": \"Record {i}\", \"average_rating\": 4.5, \"rating_number\": 10, \"features\": [], \"description\": [], \"price\": {}, \"images\": [], \"videos\": [], \"store\": \"Label {i}\", \"categories\": [\"CDs & Vinyl\", \"Jazz\"], \"details\": {{\"Date First Available\": \"March 2, 1999\"}}, \"parent_asin\": \"P{i}\", \"bought_together\": null}}\n", if i == 1 { "null".to_string() } else { format!("{i}.5") })).collect();
    std::fs::write(d.join("meta_CDs_and_Vinyl.jsonl"), meta).unwrap();
    let raw = read_raw("amazon2023", Some(&d)).unwrap();
    assert_eq!(raw.items["P2"].year, Some(1999));
    assert_eq!(raw.items["P2"].price, Some(2.5));
    assert_eq!(raw.items["P1"].price, None);
    assert!(
        raw.interactions.iter().all(|i| i.timestamp < 2_000_000_000),
        "milliseconds converted to seconds"
    );
    std::fs::write(
        d.join("CDs_and_Vinyl.jsonl"),
        "{\"rating\": 5.0, \"parent_asin\": \"P1\", \"timestamp\": 1}\n",
    )
    .unwrap();
    let err = format!("{:#}", read_raw("amazon2023", Some(&d)).unwrap_err());
    assert!(
        err.contains("CDs_and_Vinyl.jsonl:1") && err.contains("user_id"),
        "{err}"
    );
}

#[test]
fn real_ml100k_splits_are_chronological_and_seeded() {
    let raw =
        read_raw("ml-100k", None).expect("MovieLens-100k from recbole (run scripts/setup.sh)");
    assert_eq!(raw.interactions.len(), 100_000);
    let cfg = PrepareConfig::new("ml-100k", 7);
    let a = prepare(&raw, &cfg).unwrap();
    assert_eq!(a, prepare(&raw, &cfg).unwrap(), "same seed, same result");
    assert_ne!(
        a.test,
        prepare(&raw, &PrepareConfig::new("ml-100k", 8))
            .unwrap()
            .test
    );
    for (u, seq) in a.sequences.iter().enumerate() {
        assert!(seq.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        let (t, v) = (&a.test[u], &a.valid[u]);
        assert_eq!(t.pos as usize, seq.len() - 1);
        assert_eq!(v.pos as usize, seq.len() - 2);
        for e in [t, v] {
            assert_eq!(e.candidates.len(), 10);
            assert_eq!(e.candidates[e.target_index as usize], a.target(e));
            let seen: std::collections::HashSet<u32> = seq.iter().map(|x| x.item).collect();
            let negatives = e.candidates.iter().filter(|c| !seen.contains(c)).count();
            assert_eq!(negatives, 9, "9 negatives the user never interacted with");
        }
    }
    assert!(a
        .train
        .iter()
        .all(|e| (e.pos as usize) < a.sequences[e.user as usize].len() - 2));
    let sparse_max = a
        .sparse_users
        .iter()
        .map(|&u| a.train_len(u))
        .max()
        .unwrap();
    let dense_min = a.dense_users.iter().map(|&u| a.train_len(u)).min().unwrap();
    assert!(sparse_max < dense_min);
    assert_eq!(a.select(Split::Test, Subset::Dense).len(), 100);
}
