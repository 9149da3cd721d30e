//! What `fuzz_tools.rs` generates: a synthetic world with hostile metadata and the worlds
//! whose observations must equal its own (held-out and training targets replaced), and
//! proptest strategies for hostile tool calls and arguments.
#![allow(dead_code)]

use datasets::prepare::Prepared;
use datasets::{prepare, Episode, PrepareConfig};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use tools::World;

pub fn data() -> &'static Prepared {
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

pub fn world_of(d: Prepared) -> World {
    testkit::world::trained(d, 2)
}

/// One training episode per user of fold `fold` (`leakage.rs`'s rotation over positions).
pub fn chosen_training_episodes(d: &Prepared, fold: usize) -> Vec<usize> {
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
pub fn with_targets_and_later_replaced(d: &Prepared, chosen: &[usize]) -> Prepared {
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
pub struct Worlds {
    pub base: World,
    /// Test targets replaced; valid targets replaced.
    pub alt_test: World,
    pub alt_valid: World,
    /// Per fold: (chosen training episodes, the world with their targets replaced).
    pub alt_train: Vec<(Vec<usize>, World)>,
}

pub fn worlds() -> &'static Worlds {
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
pub fn episode_pair(w: &Worlds, pick: usize) -> (&Episode, &World) {
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
pub fn hostile_string() -> impl Strategy<Value = String> {
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
pub fn hostile_number() -> impl Strategy<Value = Value> {
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
pub fn hostile_value() -> impl Strategy<Value = Value> {
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
pub fn params_of(tool: &str) -> &'static [&'static str] {
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
pub fn arg_name(tool: &str) -> BoxedStrategy<String> {
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
pub fn arg_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => hostile_number(),
        2 => hostile_string().prop_map(Value::String),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => hostile_value(),
    ]
}

/// A value the schema accepts for argument `name` (any value for names no tool has).
pub fn valid_value(name: &str) -> BoxedStrategy<Value> {
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

pub fn tool_name() -> impl Strategy<Value = String> {
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
pub fn call_text() -> impl Strategy<Value = String> {
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
