//! Trajectory synthesis for SFT: a teacher plays the Analyze-Plan-Act protocol on training
//! episodes; a rejection filter keeps, per episode, a valid trajectory with the best NDCG@10
//! if it reaches a threshold (among equals: no bad calls, then a seeded choice that keeps the
//! teacher's plans diverse, or the fewest calls), and writes them as JSON lines with a
//! summary (how many kept, their NDCG, tool calls and which plans/tools).

use crate::teachers::model::{ModelTeacher, ModelTeacherConfig};
use crate::teachers::openai::{OpenAiConfig, OpenAiTeacher};
use crate::teachers::scripted::Scripted;
use crate::teachers::{Candidate, Teacher};
use anyhow::{bail, Context, Result};
use datasets::{Episode, Split};
use lm::chat::Message;
use lm::engine::StopReason;
use reward::{ndcg_at_rank, rank_in};
use rollout::protocol::{classify, parse_answer, TurnAction};
use rollout::AgentConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// Prepared HDF5 file.
    pub data: PathBuf,
    /// Output SFT set (JSON lines); a summary goes beside it (`.summary.json`).
    pub out: PathBuf,
    /// scripted | model | openai
    #[serde(default = "default_teacher")]
    pub teacher: String,
    #[serde(default = "default_split")]
    pub split: String,
    /// Use at most this many episodes of the split.
    pub limit_episodes: Option<usize>,
    /// Keep trajectories with NDCG@10 at or above this.
    #[serde(default = "default_min_ndcg")]
    pub min_ndcg: f64,
    /// Among the best trajectories of an episode: `diverse` (a seeded choice, so the SFT set
    /// keeps the teacher's plan variety) or `fewest_calls`.
    #[serde(default)]
    pub prefer: Preference,
    /// Scripted teacher only: write every plan once per `rank_candidates` preset (all,
    /// collaborative, sequential, popular) and let the rejection filter keep the best per
    /// episode, instead of only the preset validation chose.
    #[serde(default)]
    pub explore_presets: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub agent: AgentConfig,
    /// For teacher = "model".
    pub model: Option<ModelTeacherConfig>,
    /// For teacher = "openai".
    pub openai: Option<OpenAiConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    #[default]
    Diverse,
    FewestCalls,
}

fn default_teacher() -> String {
    "scripted".into()
}
fn default_split() -> String {
    "train".into()
}
fn default_min_ndcg() -> f64 {
    0.5
}

/// The teacher a config names, with its table checked.
fn teacher(cfg: &SynthConfig, path: &Path) -> Result<Box<dyn Teacher>> {
    Ok(match cfg.teacher.as_str() {
        "scripted" => Box::new(Scripted {
            history_len: cfg.agent.prompt_history_len,
            max_turns: cfg.agent.max_turns,
            explore_presets: cfg.explore_presets,
        }),
        "model" => Box::new(ModelTeacher {
            cfg: cfg.model.clone().with_context(|| {
                format!(
                    "{}: teacher = \"model\" needs a [model] table (dir, samples, ...)",
                    path.display()
                )
            })?,
            agent: cfg.agent.clone(),
            seed: cfg.seed,
        }),
        "openai" => Box::new(
            OpenAiTeacher::new(
                cfg.openai.clone().with_context(|| {
                    format!(
                        "{}: teacher = \"openai\" needs an [openai] table (base_url, model, ...)",
                        path.display()
                    )
                })?,
                cfg.agent.clone(),
                cfg.seed,
            )
            .with_context(|| format!("{}: [openai]", path.display()))?,
        ),
        other => bail!(
            "{}: teacher `{other}`: expected scripted, model or openai",
            path.display()
        ),
    })
}

/// `recthinker synth`: plays the episodes, filters, writes the SFT set and its summary.
pub fn run(cfg: &SynthConfig, path: &Path) -> Result<serde_json::Value> {
    let teacher = teacher(cfg, path)?;
    let world = tools::world::load(&cfg.data)?;
    let reg = tools::suite::standard(cfg.agent.tool_max_chars);
    let mut episodes: Vec<&Episode> = world
        .data
        .episodes(Split::parse(&cfg.split)?)
        .iter()
        .collect();
    if let Some(k) = cfg.limit_episodes {
        episodes.truncate(k);
    }
    let bar = lm::progress::Progress::new("synth", "episodes", episodes.len(), 0);
    let played = teacher.conversations(&world, &reg, &episodes, &bar)?;
    bar.finish();
    if let Some(dir) = cfg.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut kept = Vec::new();
    let mut presets: std::collections::BTreeMap<String, usize> = Default::default();
    lm::fsutil::write_atomic_with(&cfg.out, |out| {
        for (ep, cands) in episodes.iter().zip(played.candidates) {
            let pick = cfg.seed ^ ((ep.user as u64) << 24) ^ ep.pos as u64;
            if let Some((c, ndcg)) = select(cands, ep, cfg.min_ndcg, cfg.prefer, pick) {
                let line = json!({"user": world.data.users[ep.user as usize].raw_id, "pos": ep.pos, "teacher": cfg.teacher,
                    "ndcg@10": ndcg, "tool_calls": c.tool_calls, "messages": c.messages});
                writeln!(out, "{line}")?;
                kept.push((c.tool_calls, ndcg, tools_used(&c.messages)));
                *presets.entry(presets_used(&c.messages)).or_default() += 1;
            }
        }
        Ok(())
    })?;
    let mut summary = summary(&kept, episodes.len());
    summary["failed_episodes"] = json!(played.failed_episodes);
    summary["rank_candidates_by"] = json!(presets);
    lm::fsutil::write_atomic(
        &cfg.out.with_extension("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// NDCG@10 of a conversation's final answer (None when invalid).
pub fn conversation_ndcg(messages: &[Message], ep: &Episode) -> Option<f64> {
    let last = messages.last()?;
    let ranking = parse_answer(&last.content, ep.candidates.len()).ok()?;
    rank_in(&ranking, ep.target_index as usize).map(|r| ndcg_at_rank(r, 10))
}

/// Rejection filter: among valid candidates reaching `min_ndcg`, those with the best NDCG@10
/// and, among them, the fewest bad calls; then the fewest tool calls, or (`Diverse`) the one
/// `pick` selects (a per-episode seed), so equally good plans all appear in the SFT set.
pub fn select(
    cands: Vec<Candidate>,
    ep: &Episode,
    min_ndcg: f64,
    prefer: Preference,
    pick: u64,
) -> Option<(Candidate, f64)> {
    let mut scored: Vec<(Candidate, f64)> = cands
        .into_iter()
        .filter_map(|c| conversation_ndcg(&c.messages, ep).map(|s| (c, s)))
        .filter(|(_, s)| *s >= min_ndcg)
        .collect();
    let best = scored
        .iter()
        .map(|(_, s)| *s)
        .fold(f64::NEG_INFINITY, f64::max);
    scored.retain(|(_, s)| *s >= best - 1e-12);
    let fewest_bad = scored.iter().map(|(c, _)| c.bad_calls).min()?;
    scored.retain(|(c, _)| c.bad_calls == fewest_bad);
    match prefer {
        Preference::FewestCalls => {
            scored.sort_by_key(|(c, _)| c.tool_calls);
            scored.into_iter().next()
        }
        Preference::Diverse => {
            // splitmix64 of the seed: a stable, well-spread choice per episode.
            let mut z = pick.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let i = (z % scored.len() as u64) as usize;
            Some(scored.swap_remove(i))
        }
    }
}

/// The tool calls a conversation made, in order.
fn calls(messages: &[Message]) -> impl Iterator<Item = tools::ToolCall> + '_ {
    messages
        .iter()
        .filter(|m| m.role == "assistant")
        .filter_map(
            |m| match classify(&m.content, &StopReason::Eos, 0, usize::MAX) {
                TurnAction::Call(raw) => tools::ToolCall::parse(&raw).ok(),
                TurnAction::End(_) => None,
            },
        )
}

/// The tool names a conversation called, in order.
fn tools_used(messages: &[Message]) -> Vec<String> {
    calls(messages).map(|c| c.name).collect()
}

/// The `by` argument(s) of a conversation's `rank_candidates` calls ("none" without one).
fn presets_used(messages: &[Message]) -> String {
    let by: Vec<String> = calls(messages)
        .filter(|c| c.name == "rank_candidates")
        .map(|c| {
            c.arguments
                .get("by")
                .and_then(|v| v.as_str())
                .unwrap_or("all")
                .to_string()
        })
        .collect();
    if by.is_empty() {
        "none".into()
    } else {
        by.join(" > ")
    }
}

pub fn summary(kept: &[(usize, f64, Vec<String>)], total: usize) -> serde_json::Value {
    let n = kept.len().max(1) as f64;
    let mut plans: std::collections::BTreeMap<String, usize> = Default::default();
    let mut per_tool: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, _, used) in kept {
        *plans.entry(used.join(" > ")).or_default() += 1;
        for t in used {
            *per_tool.entry(t.clone()).or_default() += 1;
        }
    }
    json!({
        "plans": plans,
        "tool_calls": per_tool,
        "episodes": total,
        "kept": kept.len(),
        "keep_rate": kept.len() as f64 / total.max(1) as f64,
        "mean_ndcg@10": kept.iter().map(|k| k.1).fold(0.0, |a, b| a + b) / n,
        "mean_tool_calls": kept.iter().map(|k| k.0 as f64).fold(0.0, |a, b| a + b) / n,
    })
}
