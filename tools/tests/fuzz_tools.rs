//! Model output is hostile input, for the tools: property-based tests (proptest) feed the
//! tool-call parser, argument checking and every tool of `suite::standard` arbitrary text,
//! arbitrary JSON and wrong-typed, out-of-range, unknown and missing arguments, on a small
//! synthetic world with hostile metadata (`testkit::synthetic`). Each case must end without
//! a panic as an observation: `ok` with the tool's text (capped), or `ok = false` with an
//! error that starts with `Error: ` and stays short whatever the input's size. The leakage
//! criterion of `tests/leakage.rs` holds for every generated call: replacing an evaluation
//! episode's held-out interaction (or a training episode's target and what follows it)
//! changes no observation.
//!
//! Case counts are printed (`cargo test -p tools --test fuzz_tools -- --nocapture`);
//! `RECTHINKER_FUZZ_SCALE=10` runs ten times as many, `RECTHINKER_FUZZ_SEED=N` another seed.

use datasets::prepare::Prepared;
use datasets::{prepare, Episode, PrepareConfig, Split};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use tools::models::TrainOptions;
use tools::{EpisodeView, Registry, ToolCall, World};

/// Observations of successful calls are capped at this many characters (plus the marker).
const MAX_CHARS: usize = 700;
/// Error observations never echo the input whole.
const MAX_ERROR_CHARS: usize = 700;

fn scale() -> u32 {
    std::env::var("RECTHINKER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn runner(cases: u32) -> TestRunner {
    let seed = std::env::var("RECTHINKER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    TestRunner::new(Config {
        cases: cases * scale(),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 4000,
        ..Config::default()
    })
}

fn data() -> &'static Prepared {
    static D: OnceLock<Prepared> = OnceLock::new();
    D.get_or_init(|| {
        let raw = testkit::synthetic::raw_dataset(90, 150, 7);
        prepare(
            &raw,
            &PrepareConfig {
                subset_users: 20,
                ..PrepareConfig::new("synthetic", 3)
            },
        )
        .expect("the synthetic dataset prepares")
    })
}

fn world_of(d: Prepared) -> World {
    let opts = TrainOptions {
        seed: 1,
        bpr_epochs: 2,
        sasrec_epochs: 1,
        progress: false,
    };
    World::train(d, &opts).expect("training on the synthetic dataset")
}

/// One training episode per user of fold `fold` (`leakage.rs`'s rotation over positions).
fn chosen_training_episodes(d: &Prepared, fold: usize) -> Vec<usize> {
    let mut per_user: Vec<Vec<usize>> = vec![Vec::new(); d.users.len()];
    for (k, e) in d.train.iter().enumerate() {
        per_user[e.user as usize].push(k);
    }
    per_user
        .iter()
        .enumerate()
        .filter(|(u, eps)| !eps.is_empty() && tools::fusion::fold_of(*u as u32) == fold)
        .map(|(u, eps)| eps[u % eps.len()])
        .collect()
}

/// The chosen training episodes' targets and every later event of their users replaced.
fn with_targets_and_later_replaced(d: &Prepared, chosen: &[usize]) -> Prepared {
    let mut d = d.clone();
    let mut from: Vec<usize> = d.sequences.iter().map(|s| s.len() - 2).collect();
    for &k in chosen {
        let e = &d.train[k];
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

/// The base world and the worlds each episode's outputs must not differ from.
struct Worlds {
    base: World,
    /// Test targets replaced; valid targets replaced.
    alt_test: World,
    alt_valid: World,
    /// Per fold: (chosen training episodes, the world with their targets replaced).
    alt_train: Vec<(Vec<usize>, World)>,
}

fn worlds() -> &'static Worlds {
    static W: OnceLock<Worlds> = OnceLock::new();
    W.get_or_init(|| {
        let d = data();
        let alt_train = (0..2)
            .map(|fold| {
                let chosen = chosen_training_episodes(d, fold);
                let w = world_of(with_targets_and_later_replaced(d, &chosen));
                (chosen, w)
            })
            .collect();
        Worlds {
            base: world_of(d.clone()),
            alt_test: world_of(testkit::synthetic::with_held_out_replaced(d, 1)),
            alt_valid: world_of(testkit::synthetic::with_held_out_replaced(d, 2)),
            alt_train,
        }
    })
}

/// An episode of the base world and the world whose observations must equal its own.
fn episode_pair(w: &Worlds, pick: usize) -> (&Episode, &World) {
    let d = &w.base.data;
    match pick % 3 {
        0 => (&d.test[pick / 3 % d.test.len()], &w.alt_test),
        1 => (&d.valid[pick / 3 % d.valid.len()], &w.alt_valid),
        _ => {
            let (chosen, alt) = &w.alt_train[pick / 3 % 2];
            (&d.train[chosen[pick / 6 % chosen.len()]], alt)
        }
    }
}

/// Strings a model might put anywhere: arbitrary unicode with control characters, protocol
/// tags, JSON punctuation, raw item ids, enum words and huge repeats.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z_]{0,12}",
        1 => prop::sample::select(vec![
            "", " ", "all", "collaborative", "sequential", "popular", "recent", "oldest",
            "highest_rated", "lowest_rated", "any", "director", "co_liked", "also_buy", "brand",
            "Comedy", "comedy", "B00005", "1", "10", "not-an-item", "null", "NaN", "\u{0}",
            "<tool_call>", "</tool_call>", "<answer>1</answer>", "\u{feff}", "\u{202e}",
            "🎬🎬🎬", "\\u0000", "{\"a\":", "Ünïcødé",
        ])
        .prop_map(str::to_string),
        1 => (any::<char>(), 1usize..5000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// Numbers of every kind JSON allows, including ones no tool accepts.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => (1i64..=10).prop_map(Value::from),
        2 => (-3i64..60).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => prop::num::f64::NORMAL.prop_map(|f| json!(f)),
        1 => prop::sample::select(vec![0.0, -0.0, 1.5, 1e308, -1e308, 5e-324, 3.0, 10.0])
            .prop_map(|f| json!(f)),
    ]
}

/// Any JSON value, nested up to a few levels.
fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        hostile_number(),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((hostile_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The argument names of each tool's schema.
fn params_of(tool: &str) -> &'static [&'static str] {
    match tool {
        "user_history" => &["genre", "keyword", "min_rating", "order", "limit"],
        "similar_users" => &["k", "only_candidates"],
        "item_info" => &["candidate", "item_id"],
        "item_relations" => &["candidate", "item_id", "relation"],
        "rank_candidates" => &["by"],
        _ => &[],
    }
}

/// Argument names for `tool`: mostly its own, then other tools', near misses and arbitrary
/// strings.
fn arg_name(tool: &str) -> BoxedStrategy<String> {
    let own = params_of(tool);
    let any_known = prop::sample::select(vec![
        "candidate",
        "item_id",
        "relation",
        "genre",
        "keyword",
        "min_rating",
        "order",
        "limit",
        "k",
        "only_candidates",
        "by",
    ])
    .prop_map(str::to_string);
    let odd = prop::sample::select(vec![
        "Candidate",
        "candidates",
        "id",
        "",
        "name",
        "arguments",
    ])
    .prop_map(str::to_string);
    if own.is_empty() {
        prop_oneof![3 => any_known, 1 => odd, 1 => hostile_string()].boxed()
    } else {
        let own = prop::sample::select(own.to_vec()).prop_map(str::to_string);
        prop_oneof![8 => own, 2 => any_known, 1 => odd, 1 => hostile_string()].boxed()
    }
}

/// Argument values: right types in and out of range, and wrong types.
fn arg_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => hostile_number(),
        2 => hostile_string().prop_map(Value::String),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => hostile_value(),
    ]
}

/// A value the schema accepts for argument `name` (any value for names no tool has).
fn valid_value(name: &str) -> BoxedStrategy<Value> {
    let words = |w: &[&'static str]| {
        prop::sample::select(w.to_vec())
            .prop_map(Value::from)
            .boxed()
    };
    match name {
        "candidate" => (1i64..=10).prop_map(Value::from).boxed(),
        "item_id" => {
            let d = data();
            let ids: Vec<String> = d
                .items
                .iter()
                .step_by(7)
                .map(|i| i.raw_id.clone())
                .collect();
            prop_oneof![4 => prop::sample::select(ids), 1 => hostile_string()]
                .prop_map(Value::from)
                .boxed()
        }
        "relation" => words(&[
            "any",
            "director",
            "actor",
            "writer",
            "producer",
            "genre",
            "sequel",
            "co_liked",
            "also_buy",
            "also_view",
            "brand",
        ]),
        "genre" | "keyword" => hostile_string().prop_map(Value::from).boxed(),
        "min_rating" => (-1.0f64..6.0).prop_map(|f| json!(f)).boxed(),
        "order" => words(&["recent", "oldest", "highest_rated", "lowest_rated"]),
        "limit" => (1i64..=50).prop_map(Value::from).boxed(),
        "k" => (1i64..=20).prop_map(Value::from).boxed(),
        "only_candidates" => any::<bool>().prop_map(Value::from).boxed(),
        "by" => words(&["all", "collaborative", "sequential", "popular"]),
        _ => arg_value().boxed(),
    }
}

fn tool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "user_profile", "user_history", "similar_users", "item_info", "item_relations",
            "rank_candidates",
        ])
        .prop_map(str::to_string),
        1 => prop::sample::select(vec!["User_Profile", "user_profile ", "astrology", "", "rank"])
            .prop_map(str::to_string),
        1 => hostile_string(),
    ]
}

/// A tool call as JSON text, in every shape a model could write one.
fn call_text() -> impl Strategy<Value = String> {
    let named = tool_name().prop_flat_map(|name| {
        let pair = arg_name(&name).prop_flat_map(|k| {
            let v = prop_oneof![2 => valid_value(&k), 1 => arg_value().boxed()];
            (Just(k), v)
        });
        let args = prop::collection::vec(pair, 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()));
        (Just(name), args)
    });
    let call = (named, 0u8..10).prop_map(|((name, args), shape)| match shape {
        0 => json!({"name": name, "arguments": args.to_string()}),
        1 => json!({"name": name, "parameters": args}),
        2 => json!({"name": name}),
        3 => json!({"name": name, "arguments": null}),
        4 => json!({"name": name, "arguments": [args]}),
        5 => json!({"name": [name], "arguments": args}),
        6 => json!({"arguments": args}),
        _ => json!({"name": name, "arguments": args}),
    });
    (call, 0u8..8, any::<prop::sample::Index>(), hostile_string()).prop_map(
        |(call, edit, at, junk)| {
            let text = call.to_string();
            match edit {
                // Truncated anywhere (on a character boundary).
                0 => {
                    let cut = at.index(text.len() + 1);
                    let cut = (0..=cut)
                        .rev()
                        .find(|&c| text.is_char_boundary(c))
                        .unwrap_or(0);
                    text[..cut].to_string()
                }
                1 => format!("{text}{junk}"),
                2 => format!("{junk}{text}"),
                3 => format!("  \n{text}\n\t"),
                _ => text,
            }
        },
    )
}

/// JSON equality, with floats equal to within a few ulps: serde_json (without its
/// `float_roundtrip` feature) may read the last digit of a printed float back differently.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// An observation is well formed: ok ones are the tool's (capped) text, failures are short
/// errors that say so.
fn check_observation(obs: &tools::Observation, raw: &str) -> Result<(), TestCaseError> {
    if obs.ok {
        prop_assert!(
            !obs.text.starts_with("Error"),
            "ok observation reads as an error: {} for {raw:?}",
            obs.text
        );
        prop_assert!(
            obs.text.chars().count() <= MAX_CHARS + " …(truncated)".chars().count(),
            "observation not capped for {raw:?}"
        );
    } else {
        prop_assert!(
            obs.text.starts_with("Error: "),
            "failure without an error: {} for {raw:?}",
            obs.text
        );
        prop_assert!(
            obs.text.chars().count() <= MAX_ERROR_CHARS,
            "error echoes too much ({} chars) for {} input chars",
            obs.text.chars().count(),
            raw.chars().count()
        );
    }
    Ok(())
}

fn registry() -> Registry {
    tools::suite::standard(MAX_CHARS)
}

#[test]
fn tool_call_parse_never_panics_and_round_trips() {
    let started = std::time::Instant::now();
    // Arbitrary text and JSON: parse answers Ok with an object, or a message.
    let mut r = runner(40_000);
    let text = prop_oneof![
        any::<String>(),
        hostile_value().prop_map(|v| v.to_string()),
        call_text(),
        // Deep nesting past serde_json's recursion limit.
        (1usize..400, 0u8..3).prop_map(|(n, k)| match k {
            0 => "[".repeat(n) + &"]".repeat(n),
            1 => format!(
                "{{\"name\": \"x\", \"arguments\": {}{}}}",
                "{\"a\":".repeat(n),
                "}".repeat(n)
            ),
            _ => "{\"a\":".repeat(n),
        }),
    ];
    r.run(&text, |t| {
        match ToolCall::parse(&t) {
            Ok(c) => prop_assert!(c.arguments.is_object(), "{t:?} -> {c:?}"),
            Err(e) => prop_assert!(!e.is_empty()),
        }
        Ok(())
    })
    .unwrap();
    let parsed = r.config().cases;
    // Any name and object: text() parses back to the same call.
    let mut r = runner(20_000);
    let call = (
        any::<String>(),
        prop::collection::vec((hostile_string(), hostile_value()), 0..5),
    );
    r.run(&call, |(name, kv)| {
        let args = Value::Object(kv.into_iter().collect());
        let c = ToolCall::new(&name, args);
        let back = ToolCall::parse(&c.text()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&back.name, &c.name);
        prop_assert!(
            same_json(&back.arguments, &c.arguments),
            "{:?} came back as {:?}",
            c.arguments,
            back.arguments
        );
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_tools: ToolCall::parse {parsed} arbitrary texts + {} round trips in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn registry_answers_arbitrary_text_with_an_error_observation() {
    let w = worlds();
    let reg = registry();
    let started = std::time::Instant::now();
    let mut r = runner(20_000);
    let input = (
        prop_oneof![
            3 => any::<String>(),
            1 => hostile_value().prop_map(|v| v.to_string()),
            1 => (any::<char>(), 1usize..20_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        ],
        any::<usize>(),
    );
    r.run(&input, |(raw, pick)| {
        let (e, _) = episode_pair(w, pick);
        let obs = reg.call_text(&w.base, &EpisodeView::new(&w.base, e), &raw);
        check_observation(&obs, &raw)?;
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_tools: registry on {} arbitrary texts in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_tool_survives_hostile_arguments_without_leaking_targets() {
    let w = worlds();
    let reg = registry();
    let started = std::time::Instant::now();
    let mut r = runner(20_000);
    let (ok, bad) = (Cell::new(0usize), Cell::new(0usize));
    let per_tool = RefCell::new(std::collections::BTreeMap::<String, usize>::new());
    r.run(&(call_text(), any::<usize>()), |(raw, pick)| {
        let (e, alt) = episode_pair(w, pick);
        let obs = reg.call_text(&w.base, &EpisodeView::new(&w.base, e), &raw);
        check_observation(&obs, &raw)?;
        // The leakage criterion: the same call on a world where this episode's target (and,
        // for a training episode, what follows it) is another item says the same.
        let other = reg.call_text(alt, &EpisodeView::new(alt, e), &raw);
        prop_assert_eq!(
            &obs,
            &other,
            "the observation depends on the target for {:?}",
            raw
        );
        if obs.ok {
            ok.set(ok.get() + 1);
            if let Ok(c) = ToolCall::parse(&raw) {
                *per_tool.borrow_mut().entry(c.name).or_default() += 1;
            }
        } else {
            bad.set(bad.get() + 1);
        }
        Ok(())
    })
    .unwrap();
    let per_tool = per_tool.into_inner();
    eprintln!(
        "fuzz_tools: {} hostile tool calls ({} answered, {} refused with an error; \
         answered per tool: {per_tool:?}), each also on the target-replaced world, in {:.1}s",
        r.config().cases,
        ok.get(),
        bad.get(),
        started.elapsed().as_secs_f64()
    );
    // The generator reaches every tool's real work, not only its argument checks.
    for name in reg.names() {
        assert!(
            per_tool.get(name).copied().unwrap_or(0) >= 100,
            "{name} answered too rarely: {per_tool:?}"
        );
    }
}

/// Every tool, every valid argument combination the schemas allow (enums, booleans, the
/// edges of integer ranges), on every episode kind: answered (ok) and leak-free.
#[test]
fn every_valid_argument_combination_is_answered_without_leaking() {
    let w = worlds();
    let reg = registry();
    let started = std::time::Instant::now();
    let mut calls: Vec<Value> = Vec::new();
    for c in [1, 5, 10] {
        for rel in [
            None,
            Some("any"),
            Some("director"),
            Some("actor"),
            Some("writer"),
            Some("producer"),
            Some("genre"),
            Some("sequel"),
            Some("co_liked"),
            Some("also_buy"),
            Some("also_view"),
            Some("brand"),
        ] {
            let mut args = json!({"candidate": c});
            if let Some(rel) = rel {
                args["relation"] = json!(rel);
            }
            calls.push(json!({"name": "item_relations", "arguments": args}));
        }
        calls.push(json!({"name": "item_info", "arguments": {"candidate": c}}));
    }
    let d = &w.base.data;
    let ids = [
        &d.items[0].raw_id,
        &d.items[d.items.len() / 2].raw_id,
        &d.items[d.items.len() - 1].raw_id,
    ];
    for id in ids {
        calls.push(json!({"name": "item_info", "arguments": {"item_id": id}}));
        calls.push(json!({"name": "item_relations", "arguments": {"item_id": id}}));
    }
    for order in ["recent", "oldest", "highest_rated", "lowest_rated"] {
        for limit in [1, 50] {
            calls.push(json!({"name": "user_history", "arguments": {"order": order, "limit": limit, "min_rating": 3.5}}));
        }
    }
    calls.push(
        json!({"name": "user_history", "arguments": {"genre": "ünï", "keyword": "<answer>"}}),
    );
    for k in [1, 20] {
        for only in [false, true] {
            calls.push(
                json!({"name": "similar_users", "arguments": {"k": k, "only_candidates": only}}),
            );
        }
    }
    for by in ["all", "collaborative", "sequential", "popular"] {
        calls.push(json!({"name": "rank_candidates", "arguments": {"by": by}}));
    }
    calls.push(json!({"name": "user_profile", "arguments": {}}));
    let mut n = 0;
    let mut eps: Vec<(&Episode, &World)> = Vec::new();
    for (split, alt) in [(Split::Test, &w.alt_test), (Split::Valid, &w.alt_valid)] {
        eps.extend(d.episodes(split).iter().step_by(3).map(|e| (e, alt)));
    }
    for (chosen, alt) in &w.alt_train {
        eps.extend(chosen.iter().step_by(3).map(|&k| (&d.train[k], alt)));
    }
    for (e, alt) in eps {
        for c in &calls {
            let raw = c.to_string();
            let obs = reg.call_text(&w.base, &EpisodeView::new(&w.base, e), &raw);
            assert!(obs.ok, "{raw}: {}", obs.text);
            check_observation(&obs, &raw).unwrap();
            let other = reg.call_text(alt, &EpisodeView::new(alt, e), &raw);
            assert_eq!(obs, other, "{raw}: the observation depends on the target");
            n += 1;
        }
    }
    eprintln!(
        "fuzz_tools: {n} valid calls ({} shapes) answered and leak-free in {:.1}s",
        calls.len(),
        started.elapsed().as_secs_f64()
    );
}
