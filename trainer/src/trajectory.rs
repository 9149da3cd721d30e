//! Scoring finished agent rows and writing them as trajectories (one JSON line each).

use datasets::{Episode, Prepared};
use reward::{rank_in, reward, Outcome, RewardConfig, RewardParts};
use rollout::protocol::parse_answer;
use rollout::{AgentRow, EndReason};
use serde_json::{json, Value};

/// A row with its verdict: validity, rank and reward.
pub struct Scored<'a> {
    pub row: &'a AgentRow,
    pub valid: bool,
    pub invalid_reason: Option<String>,
    pub ranking: Option<Vec<usize>>,
    pub rank: Option<usize>,
    pub reward: RewardParts,
}

pub fn score<'a>(row: &'a AgentRow, ep: &Episode, cfg: &RewardConfig) -> Scored<'a> {
    let n = ep.candidates.len();
    let (ranking, invalid_reason) = match (&row.end, &row.answer_text) {
        (Some(EndReason::Answer), Some(text)) => match parse_answer(text, n) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("invalid answer: {e}"))),
        },
        (Some(end), _) => (
            None,
            Some(
                serde_json::to_value(end)
                    .map(|v| v.to_string().trim_matches('"').to_string())
                    .unwrap_or_default(),
            ),
        ),
        (None, _) => (None, Some("unfinished".into())),
    };
    let rank = ranking
        .as_ref()
        .and_then(|r| rank_in(r, ep.target_index as usize));
    let valid = rank.is_some();
    let outcome = Outcome {
        valid,
        rank,
        tool_calls: row.calls.len(),
        bad_calls: row.bad_calls(),
    };
    Scored {
        row,
        valid,
        invalid_reason,
        ranking,
        rank,
        reward: reward(&outcome, cfg),
    }
}

/// The JSON line of one trajectory. Token ids, mask and log-probs only when `with_tokens`.
pub fn to_json(s: &Scored, ep: &Episode, data: &Prepared, split: &str, with_tokens: bool) -> Value {
    let r = s.row;
    // The evaluation subset the user belongs to (neither: null), for `recthinker view`.
    let subset = if data.sparse_users.contains(&ep.user) {
        Some("sparse")
    } else if data.dense_users.contains(&ep.user) {
        Some("dense")
    } else {
        None
    };
    let mut v = json!({
        "episode": {"split": split, "subset": subset, "user": data.users[ep.user as usize].raw_id, "pos": ep.pos,
                     "target": data.items[data.target(ep) as usize].raw_id, "target_index": ep.target_index + 1,
                     "candidates": ep.candidates.iter().map(|&c| data.items[c as usize].raw_id.clone()).collect::<Vec<_>>()},
        "sample": r.sample,
        "messages": r.messages,
        "tool_calls": r.calls,
        "answer": s.ranking,
        "valid": s.valid,
        "invalid_reason": s.invalid_reason,
        "end": r.end,
        "rank": s.rank,
        "reward": s.reward,
        "tokens": {"prompt": r.prompt_tokens, "generated": r.generated_tokens, "forced": r.forced_tokens},
        "seconds": r.seconds,
    });
    if with_tokens {
        v["ids"] = json!(r.ids);
        v["mask"] = json!(r.mask);
        v["logprobs"] = json!(r.logprobs);
    }
    v
}
