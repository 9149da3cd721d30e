//! Model output is hostile input, for the agent loop: property-based tests (proptest) feed
//! the agent loop (`run_agent` over the `Scripted` generator, which plays turn texts under the
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

mod fuzz_text;

use datasets::prepare::Prepared;
use datasets::{prepare, Episode, PrepareConfig};
use fuzz_text::*;
use lm::chat::ChatTemplate;
use lm::engine::StopReason;
use lm::tokenizer::Tokenizer;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rollout::protocol::{
    self, classify, normalize_turn, parse_answer, with_thinking, TurnAction, ANSWER, TOOL_CALL,
};
use rollout::scripted::Scripted;
use rollout::{run_agent, AgentConfig, AgentEnv, AgentRow, EndReason};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;
use tools::World;

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
    testkit::world::quick_world(d)
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
