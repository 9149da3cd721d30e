//! `recthinker view TRAJ.jsonl`: trajectory lines read into one record per episode and
//! written as a page that lists them (sortable, filterable) and renders each conversation.
//!
//! Lines it reads: `recthinker eval --trajectories` (`trajectory::to_json`, also the layout of
//! any scored agent row), the SFT set `recthinker synth` writes (`user`, `pos`, `teacher`,
//! `ndcg@10`, `tool_calls` as a count, `messages`) and `recthinker baseline --per-episode`
//! (no conversation). Token ids, masks and log-probs (`--with-tokens`) are not carried over.

use super::html;
use anyhow::{bail, Context, Result};
use rollout::protocol::parse_answer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

const CSS: &str = include_str!("trajectories.css");
const JS: &str = include_str!("trajectories.js");

#[derive(Deserialize, Default)]
#[serde(default)]
struct EpisodeIn {
    split: Option<String>,
    subset: Option<String>,
    user: Option<Value>,
    pos: Option<u64>,
    target: Option<Value>,
    /// 1-based, as `to_json` writes it.
    target_index: Option<usize>,
    candidates: Vec<Value>,
}

#[derive(Deserialize, Serialize, Clone)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(default)]
struct Call {
    raw: String,
    name: Option<String>,
    arguments: Option<Value>,
    ok: bool,
    duplicate: bool,
    observation: String,
}

/// `tool_calls`: the calls of an eval line, or the count of a synth line.
#[derive(Deserialize)]
#[serde(untagged)]
enum ToolCalls {
    Count(usize),
    List(Vec<Call>),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Reward {
    acc: Option<f64>,
    fmt: Option<f64>,
    eff: Option<f64>,
    bad_penalty: Option<f64>,
    total: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Tokens {
    prompt: Option<u64>,
    generated: Option<u64>,
    forced: Option<u64>,
}

/// One input line: the union of the formats above (unknown fields ignored).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Line {
    episode: Option<EpisodeIn>,
    user: Option<Value>,
    pos: Option<u64>,
    sample: Option<u64>,
    messages: Option<Vec<Message>>,
    tool_calls: Option<ToolCalls>,
    answer: Option<Vec<usize>>,
    valid: Option<bool>,
    invalid_reason: Option<String>,
    end: Option<Value>,
    rank: Option<usize>,
    reward: Option<Reward>,
    tokens: Option<Tokens>,
    seconds: Option<f64>,
    #[serde(rename = "ndcg@10")]
    ndcg10: Option<f64>,
    teacher: Option<String>,
    method: Option<String>,
}

#[derive(Serialize)]
struct Candidate {
    id: Option<String>,
    title: Option<String>,
}

/// One episode as the page shows it (the table's columns are flat fields).
#[derive(Serialize)]
pub struct Episode {
    index: usize,
    line: usize,
    kind: &'static str,
    source: Option<String>,
    user: Option<String>,
    split: Option<String>,
    subset: Option<String>,
    pos: Option<u64>,
    sample: Option<u64>,
    ndcg: Option<f64>,
    rank: Option<usize>,
    reward: Option<f64>,
    acc: Option<f64>,
    fmt: Option<f64>,
    eff: Option<f64>,
    bad_penalty: Option<f64>,
    valid: Option<bool>,
    invalid_reason: Option<String>,
    end: Option<String>,
    tool_calls: Option<usize>,
    bad_calls: Option<usize>,
    turns: usize,
    tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    forced_tokens: Option<u64>,
    seconds: Option<f64>,
    tools: Vec<String>,
    target_index: Option<usize>,
    target: Option<String>,
    candidates: Vec<Candidate>,
    answer: Option<Vec<usize>>,
    messages: Vec<Message>,
    calls: Vec<Call>,
}

/// A raw id as text (ids are strings; a number is written as is).
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Candidate titles from the prompt's `Candidates:` block (`N. title`), by position.
fn prompt_titles(messages: &[Message]) -> Vec<String> {
    let Some(user) = messages.iter().find(|m| m.role == "user") else {
        return Vec::new();
    };
    let Some(at) = user.content.find("Candidates:\n") else {
        return Vec::new();
    };
    let mut titles = Vec::new();
    for line in user.content[at + "Candidates:\n".len()..].lines() {
        let want = format!("{}. ", titles.len() + 1);
        match line.strip_prefix(&want) {
            Some(t) => titles.push(t.to_string()),
            None => break,
        }
    }
    titles
}

/// How the episode ended: `answer`, `no_answer`, ... (`template_error: ...` for the one
/// reason with a payload).
fn end_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.iter().next().map(|(k, x)| match x {
            Value::String(s) => format!("{k}: {s}"),
            x => format!("{k}: {x}"),
        }),
        other => Some(other.to_string()),
    }
}

/// The tool names the assistant turns call (`<tool_call>{"name": ...}</tool_call>`), for
/// lines without a call list (synth).
fn called_tools(messages: &[Message]) -> Vec<String> {
    let mut names = Vec::new();
    for m in messages.iter().filter(|m| m.role == "assistant") {
        let mut rest = m.content.as_str();
        while let Some(start) = rest.find("<tool_call>") {
            rest = &rest[start + "<tool_call>".len()..];
            let body = rest.find("</tool_call>").map_or(rest, |end| &rest[..end]);
            if let Ok(v) = serde_json::from_str::<Value>(body.trim()) {
                if let Some(name) = v["name"].as_str() {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

fn episode(line: Line, number: usize, index: usize) -> Result<Episode> {
    let ep = line.episode.unwrap_or_default();
    if line.messages.is_none() && ep.user.is_none() && line.user.is_none() {
        bail!(
            "neither `messages` nor `episode`/`user`: not a trajectory line (recthinker eval \
             --trajectories, synth output or baseline --per-episode)"
        );
    }
    let messages = line.messages.unwrap_or_default();
    let (calls, call_count, listed) = match line.tool_calls {
        Some(ToolCalls::List(c)) => {
            let n = c.len();
            (c, Some(n), true)
        }
        Some(ToolCalls::Count(n)) => (Vec::new(), Some(n), false),
        None => (Vec::new(), None, false),
    };
    let titles = prompt_titles(&messages);
    let ids: Vec<Option<String>> = ep.candidates.iter().map(id_text).collect();
    let n = ids.len().max(titles.len());
    let candidates = (0..n)
        .map(|i| Candidate {
            id: ids.get(i).cloned().flatten(),
            title: titles.get(i).cloned(),
        })
        .collect();
    // A synth line has no parsed answer: parse its final turn as the reward does.
    let answer = line.answer.or_else(|| {
        let last = messages.last().filter(|m| m.role == "assistant")?;
        parse_answer(&last.content, n).ok()
    });
    let kind = if line.reward.is_some() {
        "eval"
    } else if line.teacher.is_some() {
        "synth"
    } else if line.method.is_some() {
        "baseline"
    } else {
        "trajectory"
    };
    let valid = line.valid.or((kind == "synth").then_some(true));
    let ndcg = match (line.reward.is_some(), line.rank, valid) {
        (true, Some(r), Some(true)) => Some(reward::ndcg_at_rank(r, 10)),
        (true, _, _) => Some(0.0),
        _ => line.ndcg10,
    };
    let reward = line.reward.unwrap_or_default();
    let tokens = line.tokens.unwrap_or_default();
    let tools: Vec<String> = if listed {
        calls.iter().filter_map(|c| c.name.clone()).collect()
    } else {
        called_tools(&messages)
    };
    Ok(Episode {
        index,
        line: number,
        kind,
        source: line.teacher.or(line.method),
        user: ep.user.as_ref().or(line.user.as_ref()).and_then(id_text),
        split: ep.split,
        subset: ep.subset,
        pos: ep.pos.or(line.pos),
        sample: line.sample,
        ndcg,
        rank: line.rank,
        reward: reward.total,
        acc: reward.acc,
        fmt: reward.fmt,
        eff: reward.eff,
        bad_penalty: reward.bad_penalty,
        valid,
        invalid_reason: line.invalid_reason,
        end: line.end.as_ref().and_then(end_text),
        tool_calls: call_count,
        bad_calls: listed.then(|| calls.iter().filter(|c| !c.ok).count()),
        turns: messages.iter().filter(|m| m.role == "assistant").count(),
        tokens: tokens.generated,
        prompt_tokens: tokens.prompt,
        forced_tokens: tokens.forced,
        seconds: line.seconds,
        tools,
        target_index: ep.target_index,
        target: ep.target.as_ref().and_then(id_text),
        candidates,
        answer,
        messages,
        calls,
    })
}

/// Every episode of `path` (blank lines skipped); a line that does not parse is an error
/// naming `path:line`.
pub fn read(path: &Path) -> Result<Vec<Episode>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let line: Line = serde_json::from_str(raw).with_context(at)?;
        out.push(episode(line, i + 1, out.len()).with_context(at)?);
    }
    if out.is_empty() {
        bail!("{}: no trajectory lines", path.display());
    }
    Ok(out)
}

/// The page for the episodes of `input`.
pub fn page(input: &Path, episodes: &[Episode]) -> Result<String> {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| input.display().to_string());
    let data = serde_json::json!({"source": input.display().to_string(), "episodes": episodes});
    let body = html::fill(
        include_str!("trajectories_body.html"),
        &[
            ("NAME", &html::escape(&name)),
            ("PATH", &html::escape(&input.display().to_string())),
        ],
    )?;
    html::page(
        &format!("{name}: trajectories"),
        CSS,
        &body,
        &html::script_json(&data)?,
        JS,
    )
}
