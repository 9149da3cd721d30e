//! Generators of hostile model output shared by `fuzz_protocol.rs` and `fuzz_agent.rs`, and
//! their proptest runner (`testkit::fuzz`: `RECTHINKER_FUZZ_SCALE`, `RECTHINKER_FUZZ_SEED`).
#![allow(dead_code)]

use lm::engine::StopReason;
use proptest::prelude::*;
use rollout::protocol::{answer_block, with_thinking, ANSWER, THINK, TOOL_CALL, TOOL_RESPONSE};
use serde_json::{json, Value};

pub use testkit::fuzz::runner;

// ---------------------------------------------------------------------------------------
// Generators of hostile model output.

/// The protocol's tags, whole, truncated, misspelt and nested, and the marker the chat
/// protocol renders in place of a turn.
pub fn tag() -> impl Strategy<Value = String> {
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
pub fn junk() -> impl Strategy<Value = String> {
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
pub fn json_value() -> impl Strategy<Value = Value> {
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
pub fn call_body() -> impl Strategy<Value = String> {
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
pub fn answer_body() -> impl Strategy<Value = String> {
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
pub fn fragment() -> impl Strategy<Value = String> {
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
pub fn plausible_turn() -> impl Strategy<Value = String> {
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
pub fn turn() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => plausible_turn(),
        12 => prop::collection::vec(fragment(), 1..5).prop_map(|f| f.concat()),
    ]
}

pub fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::Eos),
        Just(StopReason::MaxNewTokens),
        Just(StopReason::ContextFull),
        Just(StopReason::StopString(TOOL_CALL.1.into())),
        Just(StopReason::StopString(ANSWER.1.into())),
    ]
}
