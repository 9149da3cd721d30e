//! The agent loop fed scripted garbage in place of model output, on real MovieLens-100k:
//! every episode ends with a clear outcome at bounded cost, and the token record stays sound.

use testkit as support;

use datasets::{Split, Subset};
use lm::chat::ChatTemplate;
use lm::tokenizer::Tokenizer;
use rollout::scripted::Scripted;
use rollout::{run_agent, AgentConfig, AgentEnv, AgentRow, EndReason};
use support::*;
use tools::World;

fn world() -> World {
    testkit::world::ml100k_world()
}

fn run(scripts: Vec<Vec<String>>, cfg: &AgentConfig) -> (Vec<AgentRow>, usize) {
    let dir = base_model();
    let tok = Tokenizer::from_dir(&dir, &[2]).unwrap();
    let chat = ChatTemplate::new(tok.chat_template(&dir).unwrap(), None, None).unwrap();
    let w = world();
    let eps = w.data.select(Split::Test, Subset::Dense);
    let eps = &eps[..scripts.len()];
    let mut gen = Scripted::new(&tok, scripts, cfg.max_context);
    let reg = tools::suite::standard(cfg.tool_max_chars);
    let env = AgentEnv {
        tok: &tok,
        chat: &chat,
        world: &w,
        registry: &reg,
        cfg,
    };
    let rows = run_agent(&mut gen, &env, eps, 1, 0).unwrap();
    for r in &rows {
        assert_eq!(r.ids.len(), r.mask.len());
        assert_eq!(r.ids.len(), r.logprobs.len());
        assert_eq!(
            r.ids.len(),
            r.prompt_tokens + r.generated_tokens + r.forced_tokens
        );
        assert!(r.mask[..r.prompt_tokens].iter().all(|&m| m == 0));
        assert!(r.end.is_some());
    }
    (rows, gen.tokens_produced)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn garbage_turns_end_with_clear_outcomes() {
    let cfg = AgentConfig {
        max_new_tokens: 200,
        ..Default::default()
    };
    let call = |json: &str| format!("<think>x</think><tool_call>{json}</tool_call>");
    let scripts = vec![
        // 0: broken JSON, then an unknown tool, then a valid call, then an answer.
        vec![
            call("{\"name\": \"user_profile\", \"arguments\": {"),
            call(r#"{"name": "astrology", "arguments": {}}"#),
            call(r#"{"name": "user_profile", "arguments": {}}"#),
            "<answer>2, 1, 3</answer>".into(),
        ],
        // 1: the same call again and again, forever.
        (0..50)
            .map(|_| call(r#"{"name": "item_info", "arguments": {"candidate": 1}}"#))
            .collect(),
        // 2: rambling without an answer.
        s(&["I think the user likes movies."]),
        // 3: an answer that is not a ranking.
        s(&["<answer>Heat, Casino</answer>"]),
        // 4: arguments of the wrong type and out of range.
        vec![
            call(r#"{"name": "item_info", "arguments": {"candidate": "one"}}"#),
            call(r#"{"name": "item_relations", "arguments": {"candidate": 99}}"#),
            "<answer>1</answer>".into(),
        ],
        // 5: a tool call whose text never closes.
        s(&["<tool_call>{\"name\": \"user_history\""]),
    ];
    let (rows, produced) = run(scripts, &cfg);
    assert_eq!(rows[0].end, Some(EndReason::Answer));
    assert_eq!(rows[0].calls.len(), 3);
    assert_eq!(rows[0].bad_calls(), 2);
    assert!(rows[0].calls[0].observation.contains("not valid JSON"));
    assert!(rows[0].calls[1].observation.contains("unknown tool"));
    assert!(rows[0].calls[2].ok && rows[0].calls[2].observation.starts_with("User "));
    // Tool results went in as forced tokens (mask 0) holding the observation.
    assert!(rows[0].forced_tokens > 0);
    assert!(rows[0]
        .messages
        .iter()
        .any(|m| m.role == "tool" && m.content.contains("<tool_response>")));

    assert_eq!(rows[1].end, Some(EndReason::MaxTurns));
    assert_eq!(
        rows[1].calls.len(),
        cfg.max_turns,
        "endless calls stop at max_turns"
    );
    assert_eq!(
        rows[1].bad_calls(),
        cfg.max_turns - 1,
        "repeats are duplicate (bad) calls"
    );
    assert!(rows[1].calls[1].duplicate);

    assert_eq!(rows[2].end, Some(EndReason::NoAnswer));
    assert_eq!(
        rows[3].end,
        Some(EndReason::Answer),
        "the reward judges the answer's validity"
    );
    assert_eq!(rows[4].bad_calls(), 2);
    assert!(rows[4].calls[0].observation.contains("type integer"));
    assert_eq!(rows[5].end, Some(EndReason::NoAnswer));
    assert!(
        produced < 6 * 8 * cfg.max_new_tokens,
        "bounded cost: {produced} tokens"
    );
}

#[test]
fn huge_outputs_are_cut_by_the_limits() {
    let huge_args = format!(
        r#"<tool_call>{{"name": "user_history", "arguments": {{"keyword": "{}"}}}}</tool_call>"#,
        "z".repeat(50_000)
    );
    // A turn longer than max_new_tokens ends as too long, whatever it holds.
    let cfg = AgentConfig {
        max_new_tokens: 64,
        ..Default::default()
    };
    let (rows, _) = run(
        vec![vec![huge_args.clone()], vec!["word ".repeat(10_000)]],
        &cfg,
    );
    assert_eq!(rows[0].end, Some(EndReason::TurnTooLong));
    assert_eq!(rows[0].generated_tokens, 64);
    assert_eq!(rows[1].end, Some(EndReason::TurnTooLong));
    // With room for it, the call runs, and the context budget ends the episode.
    let cfg = AgentConfig {
        max_new_tokens: 100_000,
        max_context: 6000,
        ..Default::default()
    };
    let (rows, _) = run(vec![vec![huge_args.clone(), huge_args]], &cfg);
    assert_eq!(rows[0].end, Some(EndReason::ContextFull));
    assert!(rows[0].ids.len() <= cfg.max_context);
}
