//! On real MovieLens-100k: the store round-trips, tools fail gracefully on bad calls,
//! nothing a tool says about an evaluation episode depends on its held-out interaction, and
//! nothing a tool says about a training episode depends on its target or what follows.

use datasets::prepare::Prepared;
use datasets::store::{read_prepared, write_prepared, Reader, Writer};
use datasets::{prepare, read_raw, Episode, PrepareConfig, Split, Subset};
use serde_json::json;
use std::sync::OnceLock;
use tools::models::TrainOptions;
use tools::{EpisodeView, Horizon, World};

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
    World::train(d, &quick()).unwrap()
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| world_of(data().clone()))
}

/// Every tool with every argument shape the agent can use, for each episode of `split`.
fn all_outputs(w: &World, split: Split) -> Vec<String> {
    let episodes: Vec<&Episode> = w.data.episodes(split).iter().collect();
    outputs_of(w, &episodes)
}

/// Every tool with every argument shape the agent can use, for each of `episodes`.
fn outputs_of(w: &World, episodes: &[&Episode]) -> Vec<String> {
    let reg = tools::suite::standard(4000);
    let mut calls = vec![
        json!({"name": "user_profile", "arguments": {}}),
        json!({"name": "user_history", "arguments": {"limit": 50}}),
        json!({"name": "user_history", "arguments": {"order": "highest_rated", "limit": 50}}),
        json!({"name": "similar_users", "arguments": {"k": 20}}),
        json!({"name": "similar_users", "arguments": {"k": 20, "only_candidates": true}}),
    ];
    for by in ["all", "collaborative", "sequential", "popular"] {
        calls.push(json!({"name": "rank_candidates", "arguments": {"by": by}}));
    }
    for c in 1..=10 {
        calls.push(json!({"name": "item_info", "arguments": {"candidate": c}}));
        calls.push(json!({"name": "item_relations", "arguments": {"candidate": c}}));
    }
    let mut out = Vec::new();
    for e in episodes {
        let view = EpisodeView::new(w, e);
        for c in &calls {
            out.push(reg.call_text(w, &view, &c.to_string()).text);
        }
    }
    out
}

#[test]
fn tool_outputs_do_not_depend_on_held_out_interactions() {
    let base = world();
    for (split, from_end) in [(Split::Valid, 2), (Split::Test, 1)] {
        let alt = world_of(testkit::synthetic::with_held_out_replaced(data(), from_end));
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
                base.eval.models.sasrec.score(&items, &e.candidates),
                alt.eval.models.sasrec.score(&items, &e.candidates)
            );
            for &c in &e.candidates {
                assert_eq!(
                    base.eval.models.bpr.score(e.user, c),
                    alt.eval.models.bpr.score(e.user, c)
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
            assert_eq!(EpisodeView::new(w, e).knowledge.horizon, Horizon::Eval);
            let train = &w.eval.sequences[e.user as usize];
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
                .eval
                .sequences
                .iter()
                .flatten()
                .filter(|x| x.item == target)
                .count();
            assert_eq!(w.eval.item_stats[target as usize].count as usize, count);
            // Similar users never include the user; their lists come from training data.
            assert!(w
                .eval
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
    tools::world::save(w, &path).unwrap();
    let r = Reader::open(&path).unwrap();
    assert_eq!(&read_prepared(&r).unwrap(), &w.data);
    let loaded = tools::world::load(&path).unwrap();
    for h in Horizon::ALL {
        let (l, k) = (&loaded.knowledge(h).models, &w.knowledge(h).models);
        assert_eq!(l.cooc.sims, k.cooc.sims);
        assert_eq!(l.userknn.neighbors, k.userknn.neighbors);
        let e = &w.data.test[0];
        let items: Vec<u32> = w.data.history(e).iter().map(|h| h.item).collect();
        assert_eq!(
            l.sasrec.score(&items, &e.candidates),
            k.sasrec.score(&items, &e.candidates)
        );
        assert_eq!(l.bpr.score(3, 7), k.bpr.score(3, 7));
    }
    // The two horizons really are different models.
    assert_ne!(
        w.eval.models.userknn.neighbors,
        w.train.models.userknn.neighbors
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_store_without_the_training_models_is_refused() {
    let w = world();
    let path = std::env::temp_dir().join(format!("recthinker-store1-{}.h5", std::process::id()));
    let writer = Writer::create(&path).unwrap();
    write_prepared(&writer, &w.data).unwrap();
    w.eval.models.save(&writer, Horizon::Eval.group()).unwrap();
    writer.finish().unwrap();
    let err = match tools::world::load(&path) {
        Ok(_) => panic!("a store without /models_train loaded"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_file(&path);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("/models_train"), "{err}");
    assert!(err.contains("run `recthinker data prepare` again"), "{err}");
}

/// One training episode per user (users with none are skipped), rotating over the user's
/// training positions so that every position is exercised.
fn one_training_episode_per_user(d: &Prepared) -> Vec<&Episode> {
    let mut per_user: Vec<Vec<&Episode>> = vec![Vec::new(); d.users.len()];
    for e in &d.train {
        per_user[e.user as usize].push(e);
    }
    per_user
        .iter()
        .enumerate()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(u, eps)| eps[u % eps.len()])
        .collect()
}

/// A copy of the data where, for every user, the chosen training episode's target and every
/// later event (the user's other training targets after it and both held-out events) point at
/// another item (0, or 1 where it was 0), rated 1; users without a chosen episode get their
/// held-out events replaced.
fn with_targets_and_later_replaced(d: &Prepared, chosen: &[&Episode]) -> Prepared {
    let mut d = d.clone();
    let mut from: Vec<usize> = d.sequences.iter().map(|s| s.len() - 2).collect();
    for e in chosen {
        from[e.user as usize] = e.pos as usize;
    }
    for (seq, from) in d.sequences.iter_mut().zip(from) {
        for ev in &mut seq[from..] {
            ev.item = u32::from(ev.item == 0);
            ev.rating = 1.0;
        }
    }
    d
}

#[test]
fn tool_outputs_of_training_episodes_do_not_depend_on_their_targets() {
    let base = world();
    let all_chosen = one_training_episode_per_user(&base.data);
    // The same budget of calls as one evaluation split above (one episode per user).
    assert!(all_chosen.len() <= base.data.valid.len());
    assert!(all_chosen.len() > base.data.valid.len() * 9 / 10);
    // `rank_candidates` ranks a user's episodes with weights fit on the other fold of users,
    // so the targets are replaced one fold at a time and that fold's outputs compared.
    for fold in 0..2 {
        let chosen: Vec<&Episode> = all_chosen
            .iter()
            .copied()
            .filter(|e| tools::fusion::fold_of(e.user) == fold)
            .collect();
        let alt = world_of(with_targets_and_later_replaced(&base.data, &chosen));
        let alt_chosen: Vec<&Episode> = one_training_episode_per_user(&alt.data)
            .into_iter()
            .filter(|e| tools::fusion::fold_of(e.user) == fold)
            .collect();
        assert_eq!(chosen, alt_chosen);
        for e in &chosen {
            assert_eq!(base.data.split_of(e), Split::Train);
            assert_eq!(EpisodeView::new(base, e).knowledge.horizon, Horizon::Train);
            assert_ne!(
                base.data.target(e),
                alt.data.target(e),
                "the target was replaced"
            );
        }
        let (a, b) = (outputs_of(base, &chosen), outputs_of(&alt, &chosen));
        assert_eq!(a.len(), b.len());
        if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
            eprintln!("first difference:\n{x}\n---\n{y}");
        }
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing, 0,
            "train, fold {fold}: {differing} tool outputs changed with the training targets"
        );
        // The training horizon's collaborative models agree too; the evaluation horizon's
        // (which do know training targets) do not.
        for e in &chosen {
            let items: Vec<u32> = base.data.history(e).iter().map(|h| h.item).collect();
            assert_eq!(
                base.train.models.sasrec.score(&items, &e.candidates),
                alt.train.models.sasrec.score(&items, &e.candidates)
            );
            for &c in &e.candidates {
                assert_eq!(
                    base.train.models.bpr.score(e.user, c),
                    alt.train.models.bpr.score(e.user, c)
                );
            }
        }
        assert_ne!(
            base.eval.models.userknn.neighbors,
            alt.eval.models.userknn.neighbors
        );
    }
}

#[test]
fn training_targets_are_absent_from_what_training_tools_know() {
    let w = world();
    for e in &w.data.train {
        let known = &w.train.sequences[e.user as usize];
        // Cut before the user's earliest training target: nothing at or after `pos`.
        assert!(known.len() <= e.pos as usize);
        assert_eq!(known[..], w.data.sequences[e.user as usize][..known.len()]);
        assert!(known.len() >= w.data.config.min_train_history);
    }
    let count = |item: u32| {
        w.train
            .sequences
            .iter()
            .flatten()
            .filter(|x| x.item == item)
            .count()
    };
    for e in w.data.train.iter().step_by(7) {
        let target = w.data.target(e);
        assert_eq!(
            w.train.item_stats[target as usize].count as usize,
            count(target)
        );
    }
}

/// NDCG@10 of ranking candidates by how many of the user's 10 most similar users had each
/// (ties in candidate order), per split, with every episode on the evaluation horizon (as
/// before the training horizon existed) and on its own horizon. Prints the table.
#[test]
fn similar_users_count_gap_between_splits() {
    let w = world();
    let ndcg = |e: &Episode, k: &tools::Knowledge| {
        let neighbors: Vec<u32> = k
            .models
            .userknn
            .neighbors
            .of(e.user)
            .take(10)
            .map(|(v, _)| v)
            .collect();
        let had: Vec<usize> = e
            .candidates
            .iter()
            .map(|&c| {
                neighbors
                    .iter()
                    .filter(|&&v| k.sequences[v as usize].iter().any(|x| x.item == c))
                    .count()
            })
            .collect();
        let mut order: Vec<usize> = (0..e.candidates.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(had[i]));
        let rank = 1 + order
            .iter()
            .position(|&i| i == e.target_index as usize)
            .unwrap();
        1.0 / (rank as f64 + 1.0).log2()
    };
    let mean = |split: Split, own: bool| {
        let eps = w.data.episodes(split);
        eps.iter()
            .map(|e| {
                let k = if own { w.knowledge_for(e) } else { &w.eval };
                ndcg(e, k)
            })
            .sum::<f64>()
            / eps.len() as f64
    };
    let mut own = Vec::new();
    for (label, on_own) in [("all on eval horizon", false), ("own horizon", true)] {
        let v: Vec<f64> = [Split::Train, Split::Valid, Split::Test]
            .iter()
            .map(|&s| mean(s, on_own))
            .collect();
        eprintln!(
            "similar-users count NDCG@10 ({label}): train {:.4} ({} episodes), valid {:.4}, test {:.4}",
            v[0],
            w.data.train.len(),
            v[1],
            v[2]
        );
        own = v;
    }
    // With its own horizon, a training episode's evidence is no better than a validation
    // episode's (it was 0.06 better on the evaluation horizon).
    assert!(own[0] <= own[1] + 0.02, "{own:?}");
}
