//! On real MovieLens-100k: the store round-trips, tools fail gracefully on bad calls, and
//! nothing a tool says about an evaluation episode depends on its held-out interaction.

use datasets::prepare::Prepared;
use datasets::store::{read_prepared, write_prepared, Reader, Writer};
use datasets::{prepare, read_raw, PrepareConfig, Split, Subset};
use serde_json::json;
use std::sync::OnceLock;
use tools::models::{CfModels, TrainOptions};
use tools::world::train_sequences;
use tools::{EpisodeView, World};

fn quick() -> TrainOptions {
    TrainOptions {
        seed: 1,
        bpr_epochs: 3,
        sasrec_epochs: 2,
        progress: false,
    }
}

fn data() -> &'static Prepared {
    static D: OnceLock<Prepared> = OnceLock::new();
    D.get_or_init(|| {
        let raw =
            read_raw("ml-100k", None).expect("MovieLens-100k from recbole (run scripts/setup.sh)");
        prepare(&raw, &PrepareConfig::new("ml-100k", 42)).unwrap()
    })
}

fn world_of(d: Prepared) -> World {
    let models = CfModels::train(&d, &train_sequences(&d), &quick()).unwrap();
    World::new(d, models)
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| world_of(data().clone()))
}

/// Every tool with every argument shape the agent can use, for one episode.
fn all_outputs(w: &World, split: Split) -> Vec<String> {
    let reg = tools::suite::standard(4000);
    let mut calls = vec![
        json!({"name": "user_profile", "arguments": {}}),
        json!({"name": "user_history", "arguments": {"limit": 50}}),
        json!({"name": "user_history", "arguments": {"order": "highest_rated", "limit": 50}}),
        json!({"name": "similar_users", "arguments": {"k": 20}}),
        json!({"name": "similar_users", "arguments": {"k": 20, "only_candidates": true}}),
    ];
    for c in 1..=10 {
        calls.push(json!({"name": "item_info", "arguments": {"candidate": c}}));
        calls.push(json!({"name": "item_relations", "arguments": {"candidate": c}}));
    }
    let mut out = Vec::new();
    for e in w.data.episodes(split) {
        let view = EpisodeView::new(w, e);
        for c in &calls {
            out.push(reg.call_text(w, &view, &c.to_string()).text);
        }
    }
    out
}

/// A copy of the data where the held-out event at `from_end` (1 = test, 2 = validation) of
/// every user points at one other item, rated 1: any output that read them would change.
fn with_held_out_replaced(d: &Prepared, from_end: usize) -> Prepared {
    let mut d = d.clone();
    let ghost = 0;
    for seq in &mut d.sequences {
        let n = seq.len();
        seq[n - from_end].item = ghost;
        seq[n - from_end].rating = 1.0;
    }
    d
}

#[test]
fn tool_outputs_do_not_depend_on_held_out_interactions() {
    let base = world();
    for (split, from_end) in [(Split::Valid, 2), (Split::Test, 1)] {
        let alt = world_of(with_held_out_replaced(data(), from_end));
        let (a, b) = (all_outputs(base, split), all_outputs(&alt, split));
        assert_eq!(a.len(), b.len());
        if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
            eprintln!("first difference:\n{x}\n---\n{y}");
        }
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing, 0,
            "{split:?}: {differing} tool outputs changed with the held-out interactions"
        );
        // The collaborative models agree too.
        for e in base.data.episodes(split) {
            let items: Vec<u32> = base.data.history(e).iter().map(|h| h.item).collect();
            assert_eq!(
                base.models.sasrec.score(&items, &e.candidates),
                alt.models.sasrec.score(&items, &e.candidates)
            );
            for &c in &e.candidates {
                assert_eq!(
                    base.models.bpr.score(e.user, c),
                    alt.models.bpr.score(e.user, c)
                );
            }
        }
    }
}

#[test]
fn evaluation_targets_are_absent_from_what_tools_know() {
    let w = world();
    for split in [Split::Valid, Split::Test] {
        for e in w.data.episodes(split) {
            let target = w.data.target(e);
            let train = &w.train_sequences[e.user as usize];
            assert!(
                train.iter().all(|x| x.item != target),
                "target in the user's training data"
            );
            assert!(
                w.data.history(e).iter().all(|x| x.item != target),
                "target in the episode history"
            );
            // Popularity counts only training interactions.
            let count = w
                .train_sequences
                .iter()
                .flatten()
                .filter(|x| x.item == target)
                .count();
            assert_eq!(w.item_stats[target as usize].count as usize, count);
            // Similar users never include the user; their lists come from training data.
            assert!(w
                .models
                .userknn
                .neighbors
                .of(e.user)
                .all(|(v, _)| v != e.user));
        }
    }
}

#[test]
fn bad_calls_become_error_observations() {
    let w = world();
    let e = w.data.select(Split::Test, Subset::Dense)[0];
    let view = EpisodeView::new(w, e);
    let reg = tools::suite::standard(500);
    let huge = "x".repeat(100_000);
    let cases = [
        ("{not json", "not valid JSON"),
        (r#"{"arguments": {}}"#, "\"name\""),
        (
            r#"{"name": "user_favourites", "arguments": {}}"#,
            "unknown tool",
        ),
        (r#"{"name": "item_info", "arguments": {}}"#, "candidate"),
        (
            r#"{"name": "item_info", "arguments": {"candidate": "three"}}"#,
            "type integer",
        ),
        (
            r#"{"name": "item_info", "arguments": {"candidate": 11}}"#,
            "out of range",
        ),
        (
            r#"{"name": "item_info", "arguments": {"item_id": "no-such-item"}}"#,
            "unknown item_id",
        ),
        (
            r#"{"name": "user_history", "arguments": {"order": "random"}}"#,
            "one of",
        ),
        (
            r#"{"name": "user_history", "arguments": {"colour": "red"}}"#,
            "unknown argument",
        ),
        (
            r#"{"name": "similar_users", "arguments": [1, 2]}"#,
            "JSON object",
        ),
    ];
    for (call, expect) in cases {
        let obs = reg.call_text(w, &view, call);
        assert!(!obs.ok, "{call} should be a bad call");
        assert!(obs.text.contains(expect), "{call}: {}", obs.text);
    }
    let obs = reg.call_text(
        w,
        &view,
        &json!({"name": huge, "arguments": {}}).to_string(),
    );
    assert!(
        !obs.ok && obs.text.len() < 1000,
        "huge names are not echoed back whole"
    );
    for name in reg.names() {
        let args = if name.starts_with("item") {
            json!({"candidate": 1})
        } else {
            json!({})
        };
        let obs = reg.call_text(
            w,
            &view,
            &json!({"name": name, "arguments": args}).to_string(),
        );
        assert!(obs.ok, "{name}: {}", obs.text);
        assert!(
            obs.text.chars().count() <= 500 + 20,
            "{name}: output capped"
        );
    }
}

#[test]
fn store_round_trips_data_and_models() {
    let w = world();
    let path = std::env::temp_dir().join(format!("recthinker-store-{}.h5", std::process::id()));
    let writer = Writer::create(&path).unwrap();
    write_prepared(&writer, &w.data).unwrap();
    w.models.save(&writer).unwrap();
    writer.finish().unwrap();
    let r = Reader::open(&path).unwrap();
    assert_eq!(&read_prepared(&r).unwrap(), &w.data);
    let loaded = tools::world::load(&path).unwrap();
    assert_eq!(loaded.models.cooc.sims, w.models.cooc.sims);
    assert_eq!(loaded.models.userknn.neighbors, w.models.userknn.neighbors);
    let e = &w.data.test[0];
    let items: Vec<u32> = w.data.history(e).iter().map(|h| h.item).collect();
    assert_eq!(
        loaded.models.sasrec.score(&items, &e.candidates),
        w.models.sasrec.score(&items, &e.candidates)
    );
    assert_eq!(loaded.models.bpr.score(3, 7), w.models.bpr.score(3, 7));
    let _ = std::fs::remove_file(&path);
}
