//! The batched agent loop over a `Generator`.

use crate::episode::{classify, AgentRow, CallRecord, EndReason, TurnAction};
use crate::generator::Generator;
use crate::prompt::{system_prompt, user_prompt};
use anyhow::{Context, Result};
use datasets::Episode;
use lm::chat::{ChatTemplate, Message};
use lm::sampling::SamplingParams;
use lm::tokenizer::Tokenizer;
use rayon::prelude::*;
use std::time::Instant;
use tools::{EpisodeView, Registry, ToolCall, World};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Most tool calls per episode.
    pub max_turns: usize,
    /// Most sampled tokens per assistant turn.
    pub max_new_tokens: usize,
    /// Most tokens per conversation (prompt + everything after).
    pub max_context: usize,
    /// History items shown in the user prompt.
    pub prompt_history_len: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    /// Observations longer than this are cut.
    pub tool_max_chars: usize,
    /// False: the LLMRank-style baseline, ranking from the prompt alone.
    pub use_tools: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            max_turns: 6,
            max_new_tokens: 384,
            max_context: 4096,
            prompt_history_len: 5,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            tool_max_chars: 1200,
            use_tools: true,
        }
    }
}

pub const STOPS: [&str; 2] = ["</tool_call>", "</answer>"];

/// The text that follows an assistant turn when a tool message is appended, as the chat
/// template renders it (end of turn, tool message, next assistant header). Only this new
/// text is tokenized; the generated turn never is.
pub fn tool_suffix(
    chat: &ChatTemplate,
    messages: &[Message],
    tool_content: &str,
) -> Result<String> {
    let before = chat.render(messages, false, None)?;
    let last = messages.last().map(|m| m.content.as_str()).unwrap_or("");
    let end = before
        .rfind(last)
        .map(|p| p + last.len())
        .context("the template dropped the assistant turn")?;
    let mut with_tool = messages.to_vec();
    with_tool.push(Message::tool(tool_content));
    let after = chat.render(&with_tool, true, None)?;
    if !after.starts_with(&before[..end]) {
        anyhow::bail!(
            "the chat template renders earlier turns differently once a tool message follows"
        );
    }
    Ok(after[end..].to_string())
}

/// Whether the template wraps tool messages in `<tool_response>` itself.
pub fn template_wraps_tool_responses(chat: &ChatTemplate) -> bool {
    let probe = [
        Message::user("u"),
        Message::assistant("a"),
        Message::tool("PROBE"),
    ];
    chat.render(&probe, true, None)
        .map(|s| s.contains("<tool_response>"))
        .unwrap_or(false)
}

/// Runs `episodes` (each `samples` times) to the end; rows come back in (episode, sample)
/// order. `seed` makes sampling reproducible: row (e, s) uses seed + e * samples + s.
#[allow(clippy::too_many_arguments)]
pub fn run_agent(
    gen: &mut dyn Generator,
    tok: &Tokenizer,
    chat: &ChatTemplate,
    world: &World,
    registry: &Registry,
    episodes: &[&Episode],
    samples: usize,
    cfg: &AgentConfig,
    seed: u64,
) -> Result<Vec<AgentRow>> {
    let system = system_prompt(cfg.use_tools.then_some(registry), cfg.max_turns);
    let wraps = template_wraps_tool_responses(chat);
    let mut stops: Vec<String> = STOPS.iter().map(|s| s.to_string()).collect();
    if !cfg.use_tools {
        stops.retain(|s| s == "</answer>");
    }
    let mut rows: Vec<AgentRow> = Vec::new();
    let mut started: Vec<Instant> = Vec::new();
    let mut row_ids = Vec::new();
    for (e, ep) in episodes.iter().enumerate() {
        let view = EpisodeView::new(world, ep);
        let messages = vec![
            Message::system(system.clone()),
            Message::user(user_prompt(world, &view, cfg.prompt_history_len)),
        ];
        let text = chat.render(&messages, true, None)?;
        let prompt = tok.encode(&text, false)?;
        for s in 0..samples {
            let params = SamplingParams {
                temperature: cfg.temperature,
                top_k: cfg.top_k,
                top_p: cfg.top_p,
                max_new_tokens: cfg.max_new_tokens,
                stop: stops.clone(),
                seed: seed.wrapping_add((e * samples + s) as u64),
                ignore_eos: false,
            };
            row_ids.push(gen.add(&prompt, params)?);
            started.push(Instant::now());
            rows.push(AgentRow {
                episode: e,
                sample: s,
                messages: messages.clone(),
                calls: Vec::new(),
                end: None,
                answer_text: None,
                prompt_tokens: prompt.len(),
                generated_tokens: 0,
                forced_tokens: 0,
                seconds: 0.0,
                ids: Vec::new(),
                mask: Vec::new(),
                logprobs: Vec::new(),
            });
        }
    }
    let index_of = |row: usize| row_ids.iter().position(|&r| r == row);
    loop {
        let ends = gen.advance()?;
        if ends.is_empty() {
            break;
        }
        let mut jobs: Vec<(usize, String)> = Vec::new();
        for end in ends {
            let Some(k) = index_of(end.row) else { continue };
            let r = &mut rows[k];
            r.messages.push(Message::assistant(end.text.clone()));
            match classify(&end.text, &end.reason, r.calls.len(), cfg.max_turns) {
                TurnAction::End(reason) => {
                    if reason == EndReason::Answer {
                        r.answer_text = Some(end.text.clone());
                    }
                    r.end = Some(reason);
                }
                TurnAction::Call(raw) => jobs.push((k, raw)),
            }
        }
        // Tools of all rows that called one run in parallel.
        let results: Vec<CallRecord> = jobs
            .par_iter()
            .map(|(k, raw)| {
                let r = &rows[*k];
                let view = EpisodeView::new(world, episodes[r.episode]);
                let parsed = ToolCall::parse(raw).ok();
                let duplicate = parsed.as_ref().is_some_and(|p| {
                    r.calls.iter().any(|c| {
                        c.ok && c.name.as_deref() == Some(&p.name)
                            && c.arguments.as_ref() == Some(&p.arguments)
                    })
                });
                let obs = if !cfg.use_tools {
                    tools::Observation {
                        text: "Error: tools are disabled in this run; answer from the prompt."
                            .into(),
                        ok: false,
                    }
                } else {
                    registry.call_text(world, &view, raw)
                };
                let observation = if duplicate {
                    format!("{}\n(Note: you already made this exact call.)", obs.text)
                } else {
                    obs.text
                };
                CallRecord {
                    raw: tools::registry::cut(raw, 2000),
                    name: parsed.as_ref().map(|p| p.name.clone()),
                    arguments: parsed.map(|p| p.arguments),
                    ok: obs.ok && !duplicate,
                    duplicate,
                    observation,
                }
            })
            .collect();
        for ((k, _), call) in jobs.into_iter().zip(results) {
            let content = if wraps {
                call.observation.clone()
            } else {
                format!("<tool_response>\n{}\n</tool_response>", call.observation)
            };
            let r = &mut rows[k];
            r.calls.push(call);
            let suffix = match tool_suffix(chat, &r.messages, &content) {
                Ok(s) => s,
                Err(e) => {
                    r.end = Some(EndReason::TemplateError(format!("{e:#}")));
                    continue;
                }
            };
            r.messages.push(Message::tool(content));
            let forced = tok.encode(&suffix, false)?;
            let (ids, _, _) = gen.record(row_ids[k]);
            if ids.len() + forced.len() + 1 > cfg.max_context {
                r.end = Some(EndReason::ContextFull);
                continue;
            }
            gen.resume(row_ids[k], &forced)?;
        }
        for (k, r) in rows.iter_mut().enumerate() {
            if r.end.is_some() && r.ids.is_empty() {
                close(gen, row_ids[k], r, started[k]);
            }
        }
    }
    // Rows still open (the generator ran dry) end without an answer.
    for (k, r) in rows.iter_mut().enumerate() {
        if r.end.is_none() {
            r.end = Some(EndReason::NoAnswer);
            close(gen, row_ids[k], r, started[k]);
        }
    }
    Ok(rows)
}

/// Releases the row and copies its token record (ids, mask, log-probs) into `r`.
fn close(gen: &mut dyn Generator, row: usize, r: &mut AgentRow, started: Instant) {
    gen.finish(row);
    let (ids, mask, lps) = gen.record(row);
    assert_eq!(ids.len(), mask.len(), "mask must line up with ids");
    assert_eq!(ids.len(), lps.len(), "log-probs must line up with ids");
    r.ids = ids.to_vec();
    r.mask = mask.to_vec();
    r.logprobs = lps.to_vec();
    r.generated_tokens = mask.iter().filter(|&&m| m == 1).count();
    r.forced_tokens = ids.len() - r.prompt_tokens - r.generated_tokens;
    r.seconds = started.elapsed().as_secs_f64();
}
