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

mod fuzz_kit;
use fuzz_kit::*;

use datasets::{Episode, Split};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use testkit::fuzz::runner;
use tools::{EpisodeView, Registry, ToolCall, World};

/// Observations of successful calls are capped at this many characters (plus the marker).
const MAX_CHARS: usize = 700;
/// Error observations never echo the input whole.
const MAX_ERROR_CHARS: usize = 700;

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
