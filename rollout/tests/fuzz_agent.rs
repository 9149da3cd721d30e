//! Model output is hostile input, for the protocol and the agent loop: property-based tests
//! (proptest) feed `protocol::{classify, parse_answer, normalize_turn, ...}` and the agent
//! loop (`run_agent` over the `Scripted` generator, which plays turn texts under the
//! engine's rules) arbitrary text: truncated and nested tags, broken and deeply nested JSON,
//! huge numbers, wrong-typed and unknown tool arguments, unknown tools, unicode and control
//! characters, answers with repeats and out-of-range indices, text after the answer, empty
//! turns; under SmolLM2's, Qwen2.5's and Qwen3's chat templates, with small and large limits.
//!
//! Every case must end without a panic or an error from the loop, as a valid episode (a full
//! ranking) or an invalid one with a named reason (`EndReason`, `AnswerError`), with a sound
//! token record; and the whole conversation of an evaluation episode must not depend on its
//! held-out interaction (the criterion of `tools/tests/leakage.rs`, end to end).
//!
//! Case counts are printed (`cargo test -p rollout --test fuzz_agent -- --nocapture`);
//! `RECTHINKER_FUZZ_SCALE=10` runs ten times as many, `RECTHINKER_FUZZ_SEED=N` another seed.

use datasets::prepare::Prepared;
use datasets::{prepare, Episode, PrepareConfig};
use lm::chat::ChatTemplate;
use lm::engine::StopReason;
use lm::tokenizer::Tokenizer;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use rollout::protocol::{
    self, answer_block, classify, normalize_turn, observation_of, parse_answer, tool_response,
    with_thinking, AnswerError, TurnAction, ANSWER, THINK, TOOL_CALL, TOOL_RESPONSE,
};
use rollout::scripted::Scripted;
use rollout::{run_agent, AgentConfig, AgentEnv, AgentRow, EndReason};
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;
use tools::models::TrainOptions;
use tools::World;

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
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------
// Generators of hostile model output.

/// The protocol's tags, whole, truncated, misspelt and nested, and the marker the chat
/// protocol renders in place of a turn.
fn tag() -> impl Strategy<Value = String> {
    let tags = [THINK, TOOL_CALL, ANSWER, TOOL_RESPONSE];
    let mut v: Vec<String> = Vec::new();
    for (open, close) in tags {
        v.push(open.into());
        v.push(close.into());
        v.push(open[..open.len() - 1].into());
        v.push(close[..close.len() / 2].into());
        v.push(open.to_uppercase());
        v.push(format!("{open}{open}"));
        v.push(format!("{close}{open}"));
    }
    v.extend(
        [
            "<tool_call >",
            "< answer>",
            "</answer >",
            "<answer/>",
            "<|im_end|>",
            "<|im_start|>assistant\n",
            "<|endoftext|>",
            "\u{E000}recthinker-turn\u{E001}",
            "{{ messages }}",
            "{% endfor %}",
        ]
        .map(String::from),
    );
    prop::sample::select(v)
}

/// Arbitrary text: unicode with control characters, or short words.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[a-z ,.>\\[\\]()0-9-]{0,16}",
        1 => prop::sample::select(vec![
            "\u{0}", "\r\n", "\u{feff}", "\u{202e}", "🎬", "\u{1b}[2J", "\\", "\"", "\n\n\n",
        ])
        .prop_map(str::to_string),
    ]
}

/// JSON values of any shape, huge numbers included.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..25).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(|f| json!(f)),
        junk().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((junk(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The body of a tool call: well formed or not, known tools or not, any arguments.
fn call_body() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => prop::sample::select(vec![
            "user_profile", "user_history", "similar_users", "item_info", "item_relations",
            "rank_candidates",
        ])
        .prop_map(str::to_string),
        1 => junk(),
    ];
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            "candidate", "item_id", "relation", "genre", "keyword", "min_rating", "order",
            "limit", "k", "only_candidates", "by",
        ])
        .prop_map(str::to_string),
        1 => junk(),
    ];
    let value = prop_oneof![
        3 => (1i64..=10).prop_map(Value::from),
        2 => json_value(),
        1 => prop::sample::select(vec!["all", "recent", "director", "x"]).prop_map(Value::from),
        1 => Just(json!(1e308)),
        1 => Just(json!(u64::MAX)),
    ];
    let args = prop::collection::vec((key, value), 0..3)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()));
    (
        name,
        args,
        0u8..12,
        any::<prop::sample::Index>(),
        1usize..300,
    )
        .prop_map(|(name, args, shape, at, depth)| {
            let text = match shape {
                0 => json!({"name": name, "arguments": args.to_string()}).to_string(),
                1 => json!({"name": name, "parameters": args}).to_string(),
                2 => json!({"name": name, "arguments": [args]}).to_string(),
                3 => json!({"name": 7, "arguments": args}).to_string(),
                // Nested past serde_json's recursion limit.
                4 => format!(
                    "{{\"name\": \"{name}\", \"arguments\": {}1{}}}",
                    "{\"a\": [".repeat(depth),
                    "]}".repeat(depth)
                ),
                // Numbers JSON can write but no integer holds.
                5 => format!(
                    "{{\"name\": \"item_info\", \"arguments\": {{\"candidate\": 1{}}}}}",
                    "0".repeat(depth)
                ),
                6 => "not json at all".into(),
                _ => json!({"name": name, "arguments": args}).to_string(),
            };
            if shape == 11 {
                // Truncated anywhere on a character boundary.
                let cut = at.index(text.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|&c| text.is_char_boundary(c))
                    .unwrap_or(0);
                text[..cut].to_string()
            } else {
                text
            }
        })
}

/// An answer's list: indices in and out of range, repeats, signs, brackets, words, huge
/// numbers, with any separators.
fn answer_body() -> impl Strategy<Value = String> {
    let item = prop_oneof![
        6 => (1i64..=10).prop_map(|i| i.to_string()),
        1 => (-3i64..30).prop_map(|i| i.to_string()),
        1 => Just("99999999999999999999999".to_string()),
        1 => prop::sample::select(vec!["[3]", "(2)", "4.", "Heat", "", "一", "+5", "0x3", "1e1"])
            .prop_map(str::to_string),
    ];
    let sep = prop::sample::select(vec![", ", ",", " ", " > ", "\n", ",,", "; ", "\t"]);
    prop::collection::vec((item, sep), 0..14).prop_map(|v| {
        v.into_iter()
            .map(|(i, s)| format!("{i}{s}"))
            .collect::<String>()
    })
}

/// A fragment of a turn.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => junk(),
        2 => tag(),
        3 => call_body().prop_map(|b| format!("{}{b}{}", TOOL_CALL.0, TOOL_CALL.1)),
        1 => call_body(),
        3 => answer_body().prop_map(|b| format!("{}{b}{}", ANSWER.0, ANSWER.1)),
        1 => answer_body(),
        1 => junk().prop_map(|t| format!("{}{t}{}", THINK.0, THINK.1)),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => (1usize..2000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

/// A turn a model that follows the protocol could write: thinking, then one well-formed call
/// of a real tool or a full ranking.
fn plausible_turn() -> impl Strategy<Value = String> {
    let call = prop_oneof![
        Just(json!({"name": "user_profile", "arguments": {}})),
        (1i64..=10).prop_map(|c| json!({"name": "item_info", "arguments": {"candidate": c}})),
        (1i64..=10).prop_map(|c| json!({"name": "item_relations", "arguments": {"candidate": c}})),
        (1i64..=20).prop_map(|k| json!({"name": "similar_users", "arguments": {"k": k}})),
        Just(json!({"name": "user_history", "arguments": {"order": "highest_rated"}})),
        Just(json!({"name": "rank_candidates", "arguments": {"by": "all"}})),
    ]
    .prop_map(|c| format!("{}{c}{}", TOOL_CALL.0, TOOL_CALL.1));
    let answer = prop::sample::subsequence((1..=10).collect::<Vec<usize>>(), 1..=10)
        .prop_shuffle()
        .prop_map(|r| answer_block(&r));
    (junk(), prop_oneof![call, answer]).prop_map(|(t, a)| with_thinking(&t, &a))
}

/// A turn: a few fragments, a plausible turn, or nothing at all.
fn turn() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => plausible_turn(),
        12 => prop::collection::vec(fragment(), 1..5).prop_map(|f| f.concat()),
    ]
}

fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::Eos),
        Just(StopReason::MaxNewTokens),
        Just(StopReason::ContextFull),
        Just(StopReason::StopString(TOOL_CALL.1.into())),
        Just(StopReason::StopString(ANSWER.1.into())),
    ]
}

// ---------------------------------------------------------------------------------------
// The protocol's parsers.

/// `classify` says exactly what PROTOCOL.md says a turn means.
#[test]
fn classify_reads_any_turn_by_the_rules() {
    let started = Instant::now();
    let mut r = runner(40_000);
    r.run(
        &(turn(), stop_reason(), 0usize..8, 0usize..8),
        |(text, reason, calls, max)| {
            let answer = text
                .find(ANSWER.0)
                .is_some_and(|s| text[s..].contains(ANSWER.1));
            let call = text.find(TOOL_CALL.0).and_then(|s| {
                let body = &text[s + TOOL_CALL.0.len()..];
                body.find(TOOL_CALL.1).map(|e| body[..e].trim().to_string())
            });
            let expect = if answer {
                TurnAction::End(EndReason::Answer)
            } else if let Some(raw) = call {
                if calls >= max {
                    TurnAction::End(EndReason::MaxTurns)
                } else {
                    TurnAction::Call(raw)
                }
            } else {
                TurnAction::End(match reason {
                    StopReason::MaxNewTokens => EndReason::TurnTooLong,
                    StopReason::ContextFull => EndReason::ContextFull,
                    _ => EndReason::NoAnswer,
                })
            };
            prop_assert_eq!(classify(&text, &reason, calls, max), expect);
            Ok(())
        },
    )
    .unwrap();
    eprintln!(
        "fuzz_agent: classify on {} turns in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

/// `parse_answer` gives a full ranking (a permutation of 1..=n starting with the listed
/// indices) or a named error, never a panic.
#[test]
fn parse_answer_gives_a_permutation_or_a_named_error() {
    let started = Instant::now();
    let mut r = runner(40_000);
    let errors: std::cell::RefCell<BTreeMap<&'static str, usize>> = Default::default();
    r.run(&(turn(), 0usize..25), |(text, n)| {
        match parse_answer(&text, n) {
            Ok(v) => {
                let mut sorted = v.clone();
                sorted.sort_unstable();
                prop_assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                let kind = match e {
                    AnswerError::NoAnswer => {
                        let open = text.rfind(ANSWER.0);
                        prop_assert!(
                            open.is_none_or(|s| !text[s..].contains(ANSWER.1)),
                            "{text:?} has an answer"
                        );
                        "no answer"
                    }
                    AnswerError::Empty => "empty",
                    AnswerError::NotANumber(s) => {
                        prop_assert!(s.chars().count() <= 20, "echoes {s:?} whole");
                        "not a number"
                    }
                    AnswerError::OutOfRange(i) => {
                        prop_assert!(i < 1 || i as usize > n);
                        "out of range"
                    }
                    AnswerError::Duplicate(i) => {
                        prop_assert!((1..=n).contains(&i));
                        "duplicate"
                    }
                };
                *errors.borrow_mut().entry(kind).or_default() += 1;
            }
        }
        Ok(())
    })
    .unwrap();
    let cases = r.config().cases;
    // Lists of distinct in-range indices, any separators: the listed ones come first, the
    // rest follow in candidate order.
    let mut r = runner(20_000);
    let list = (1usize..25).prop_flat_map(|n| {
        (
            Just(n),
            prop::sample::subsequence((1..=n).collect::<Vec<_>>(), 1..=n).prop_shuffle(),
            prop::sample::select(vec![", ", " ", " > ", "\n", ","]),
            junk(),
        )
    });
    r.run(&list, |(n, order, sep, before)| {
        let body: Vec<String> = order.iter().map(|i| i.to_string()).collect();
        let text = format!(
            "{}{}{}{}",
            before.replace(ANSWER.0, ""),
            ANSWER.0,
            body.join(sep),
            ANSWER.1
        );
        let mut expect = order.clone();
        expect.extend((1..=n).filter(|i| !order.contains(i)));
        prop_assert_eq!(parse_answer(&text, n), Ok(expect.clone()));
        prop_assert_eq!(parse_answer(&answer_block(&expect), n), Ok(expect));
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_agent: parse_answer on {cases} turns (errors: {:?}) + {} valid lists in {:.1}s",
        errors.borrow(),
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

/// The text of a turn as the engine ends it: cut after the first stop string.
fn as_engine_turn(text: &str) -> &str {
    [TOOL_CALL.1, ANSWER.1]
        .iter()
        .filter_map(|s| text.find(s).map(|p| p + s.len()))
        .min()
        .map_or(text, |end| &text[..end])
}

/// Normalizing a turn (what teachers store) keeps what it means: the same call, the same
/// answer; tool responses round-trip; `with_thinking` never leaves thinking tags inside the
/// reasoning.
#[test]
fn normalized_turns_keep_their_meaning() {
    let started = Instant::now();
    let mut r = runner(30_000);
    r.run(&(turn(), junk()), |(text, obs)| {
        for block in [TOOL_CALL, ANSWER, THINK] {
            let _ = normalize_turn(&text, block);
        }
        match classify(&text, &StopReason::Eos, 0, 6) {
            TurnAction::Call(raw) => {
                let n = normalize_turn(&text, TOOL_CALL);
                prop_assert_eq!(
                    classify(&n, &StopReason::Eos, 0, 6),
                    TurnAction::Call(raw),
                    "normalized: {:?}",
                    n
                );
            }
            TurnAction::End(EndReason::Answer) => {
                let n = normalize_turn(&text, ANSWER);
                prop_assert_eq!(
                    classify(&n, &StopReason::Eos, 0, 6),
                    TurnAction::End(EndReason::Answer),
                    "normalized: {:?}",
                    n
                );
                let turn = as_engine_turn(&text);
                if classify(turn, &StopReason::Eos, 0, 6) == TurnAction::End(EndReason::Answer) {
                    prop_assert_eq!(
                        parse_answer(&normalize_turn(turn, ANSWER), 10),
                        parse_answer(turn, 10)
                    );
                }
            }
            TurnAction::End(_) => {}
        }
        let wrapped = tool_response(&obs);
        prop_assert_eq!(observation_of(&wrapped), obs.as_str());
        let t = with_thinking(&obs, "<answer>1</answer>");
        let inner = t
            .strip_prefix(THINK.0)
            .and_then(|t| t.rsplit_once(THINK.1))
            .map_or("", |(r, _)| r);
        prop_assert!(
            !inner.contains(THINK.0) && !inner.contains(THINK.1),
            "{t:?}"
        );
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_agent: normalize_turn/with_thinking/tool_response on {} turns in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// The agent loop.

fn data() -> &'static Prepared {
    static D: OnceLock<Prepared> = OnceLock::new();
    D.get_or_init(|| {
        let raw = testkit::synthetic::raw_dataset(60, 120, 11);
        prepare(
            &raw,
            &PrepareConfig {
                subset_users: 10,
                ..PrepareConfig::new("synthetic", 5)
            },
        )
        .expect("the synthetic dataset prepares")
    })
}

fn world_of(d: Prepared) -> World {
    let opts = TrainOptions {
        seed: 1,
        bpr_epochs: 1,
        sasrec_epochs: 1,
        progress: false,
    };
    World::train(d, &opts).expect("training on the synthetic dataset")
}

struct Env {
    tok: Tokenizer,
    /// SmolLM2's template (no tool-response tags), Qwen2.5's and Qwen3's (they add them).
    chats: Vec<(&'static str, ChatTemplate)>,
    base: World,
    alt_test: World,
    alt_valid: World,
}

fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let dir = testkit::base_model();
        let tok = Tokenizer::from_dir(&dir, &[2]).expect("tokenizer");
        let own = tok.chat_template(&dir).expect("template");
        let chats = vec![
            (
                "smollm2",
                ChatTemplate::new(own, None, None).expect("smollm2"),
            ),
            (
                "qwen2.5",
                ChatTemplate::new(Some(testkit::template("qwen2.5")), None, None).expect("qwen"),
            ),
            (
                "qwen3",
                ChatTemplate::new(Some(testkit::template("qwen3")), None, None).expect("qwen3"),
            ),
        ];
        let d = data();
        Env {
            tok,
            chats,
            base: world_of(d.clone()),
            alt_test: world_of(testkit::synthetic::with_held_out_replaced(d, 1)),
            alt_valid: world_of(testkit::synthetic::with_held_out_replaced(d, 2)),
        }
    })
}

/// One run of the loop: which template, which split, which episodes, how many samples,
/// which limits, and each row's turns.
#[derive(Debug, Clone)]
struct Case {
    chat: usize,
    test_split: bool,
    episodes: Vec<usize>,
    samples: usize,
    cfg: AgentConfig,
    scripts: Vec<Vec<String>>,
}

fn case() -> impl Strategy<Value = Case> {
    let cfg = (
        0usize..8,
        prop::sample::select(vec![1usize, 8, 64, 200, 384, 4096]),
        prop::sample::select(vec![600usize, 1500, 3000, 8192]),
        prop::sample::select(vec![0usize, 40, 1200]),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(max_turns, max_new_tokens, max_context, tool_max_chars, use_tools)| AgentConfig {
                max_turns,
                max_new_tokens,
                max_context,
                tool_max_chars,
                use_tools,
                ..Default::default()
            },
        );
    (
        0usize..3,
        any::<bool>(),
        prop::collection::vec(any::<usize>(), 1..4),
        1usize..3,
        cfg,
    )
        .prop_flat_map(|(chat, test_split, episodes, samples, cfg)| {
            let rows = episodes.len() * samples;
            let scripts = prop::collection::vec(prop::collection::vec(turn(), 0..9), rows);
            (
                Just(chat),
                Just(test_split),
                Just(episodes),
                Just(samples),
                Just(cfg),
                scripts,
            )
        })
        .prop_map(|(chat, test_split, episodes, samples, cfg, scripts)| Case {
            chat,
            test_split,
            episodes,
            samples,
            cfg,
            scripts,
        })
}

/// What an episode came to: a full ranking, or why it is invalid.
fn outcome(row: &AgentRow, n: usize) -> Result<Vec<usize>, String> {
    match &row.end {
        Some(EndReason::Answer) => match &row.answer_text {
            Some(text) => parse_answer(text, n).map_err(|e| format!("answer: {e}")),
            None => Err("answer without text".into()),
        },
        Some(other) => Err(format!("{other:?}")),
        None => Err("no end".into()),
    }
}

fn run_case(
    c: &Case,
    world: &World,
    eps: &[&Episode],
) -> Result<(Vec<AgentRow>, usize), TestCaseError> {
    let e = env();
    let reg = tools::suite::standard(c.cfg.tool_max_chars);
    let agent_env = AgentEnv {
        tok: &e.tok,
        chat: &e.chats[c.chat].1,
        world,
        registry: &reg,
        cfg: &c.cfg,
    };
    let mut gen = Scripted::new(&e.tok, c.scripts.clone(), c.cfg.max_context);
    let rows = run_agent(&mut gen, &agent_env, eps, c.samples, 0)
        .map_err(|err| TestCaseError::fail(format!("the loop failed: {err:#}")))?;
    Ok((rows, gen.tokens_produced))
}

/// Every hostile script ends as a valid episode or a named invalid one, with a sound token
/// record, bounded cost, well-formed tool calls and observations; and an evaluation
/// episode's whole conversation is the same when its held-out interaction is another item.
#[test]
fn the_agent_loop_survives_hostile_model_output() {
    let e = env();
    let d = &e.base.data;
    let started = Instant::now();
    let cases = 3_000;
    let mut r = runner(cases);
    let rows_run = Cell::new(0usize);
    let outcomes: std::cell::RefCell<BTreeMap<String, usize>> = Default::default();
    let per_chat: std::cell::RefCell<BTreeMap<&'static str, usize>> = Default::default();
    r.run(&case(), |c| {
        let (split, alt) = if c.test_split {
            (&d.test, &e.alt_test)
        } else {
            (&d.valid, &e.alt_valid)
        };
        let eps: Vec<&Episode> = c
            .episodes
            .iter()
            .map(|&k| &split[k % split.len()])
            .collect();
        let (rows, produced) = run_case(&c, &e.base, &eps)?;
        prop_assert_eq!(rows.len(), eps.len() * c.samples);
        let mut turns = 0;
        for (k, row) in rows.iter().enumerate() {
            let ep = eps[row.episode];
            prop_assert_eq!((row.episode, row.sample), (k / c.samples, k % c.samples));
            // The token record lines up.
            prop_assert_eq!(row.ids.len(), row.mask.len());
            prop_assert_eq!(row.ids.len(), row.logprobs.len());
            prop_assert_eq!(
                row.ids.len(),
                row.prompt_tokens + row.generated_tokens + row.forced_tokens
            );
            prop_assert!(row.mask[..row.prompt_tokens].iter().all(|&m| m == 0));
            prop_assert!(row.ids.len() <= c.cfg.max_context.max(row.prompt_tokens));
            // Limits hold.
            prop_assert!(row.calls.len() <= c.cfg.max_turns);
            let assistant = row
                .messages
                .iter()
                .filter(|m| m.role == "assistant")
                .count();
            prop_assert!(assistant <= row.calls.len() + 1);
            prop_assert!(row.generated_tokens <= assistant * c.cfg.max_new_tokens);
            turns += assistant;
            // Calls and observations are well formed.
            for call in &row.calls {
                if call.ok {
                    prop_assert!(!call.observation.starts_with("Error"), "{:?}", call);
                    prop_assert!(call.name.is_some() && !call.duplicate);
                } else {
                    prop_assert!(
                        call.observation.starts_with("Error") || call.duplicate,
                        "{:?}",
                        call
                    );
                }
                prop_assert!(call.raw.chars().count() <= 2000 + 20);
            }
            // A valid ranking or a named reason.
            let o = outcome(row, ep.candidates.len());
            if let Ok(ranking) = &o {
                let mut s = ranking.clone();
                s.sort_unstable();
                prop_assert_eq!(s, (1..=ep.candidates.len()).collect::<Vec<_>>());
            }
            let key = match &o {
                Ok(_) => "valid".to_string(),
                Err(reason) => {
                    prop_assert!(!reason.is_empty());
                    reason
                        .split([':', '('])
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                }
            };
            *outcomes.borrow_mut().entry(key).or_default() += 1;
            // Trajectories are written as JSON lines.
            prop_assert!(serde_json::to_string(row).is_ok());
        }
        prop_assert!(
            produced <= (turns.max(1)) * c.cfg.max_new_tokens.min(c.cfg.max_context),
            "cost not bounded: {produced} tokens"
        );
        // End to end, nothing depends on the evaluation target.
        let (alt_rows, _) = run_case(&c, alt, &eps)?;
        for (a, b) in rows.iter().zip(&alt_rows) {
            prop_assert_eq!(
                &a.messages,
                &b.messages,
                "a conversation depends on the target"
            );
            prop_assert_eq!(&a.ids, &b.ids);
            prop_assert_eq!(&a.end, &b.end);
        }
        rows_run.set(rows_run.get() + rows.len());
        *per_chat.borrow_mut().entry(e.chats[c.chat].0).or_default() += rows.len();
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_agent: agent loop on {} cases, {} episodes (x2: the target-replaced world too; \
         per template {:?}); outcomes {:?}; in {:.1}s",
        r.config().cases,
        rows_run.get(),
        per_chat.borrow(),
        outcomes.borrow(),
        started.elapsed().as_secs_f64()
    );
    let o = outcomes.borrow();
    for kind in [
        "valid",
        "answer",
        "NoAnswer",
        "MaxTurns",
        "TurnTooLong",
        "ContextFull",
    ] {
        assert!(
            o.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} outcome: {o:?}"
        );
    }
}

/// Regression: a turn whose closing tag comes before its opening one is normalized around
/// the block `classify` reads, not cut at the stray closing tag.
#[test]
fn normalize_turn_keeps_the_block_classify_reads() {
    let t = "</tool_call> <tool_call>{\"name\": \"user_profile\"}</tool_call>";
    assert_eq!(
        classify(&normalize_turn(t, TOOL_CALL), &StopReason::Eos, 0, 6),
        classify(t, &StopReason::Eos, 0, 6)
    );
    let a = "done </answer> so: <answer>2, 1</answer>";
    assert_eq!(
        classify(&normalize_turn(a, ANSWER), &StopReason::Eos, 0, 6),
        TurnAction::End(EndReason::Answer)
    );
    // Thinking tags inside the reasoning cannot join the text around them into a new tag.
    let n = with_thinking(
        "<ans<think>wer>1</ans</think>wer>",
        "<tool_call>{}</tool_call>",
    );
    assert_ne!(
        classify(&n, &StopReason::Eos, 0, 6),
        TurnAction::End(EndReason::Answer),
        "{n:?}"
    );
    let _ = protocol::stops(true);
}
