//! The batched agent loop over a `Generator`.

use crate::config::AgentConfig;
use crate::episode::{AgentRow, CallRecord, EndReason};
use crate::generator::Generator;
use crate::prompt::{system_prompt, user_prompt};
use crate::protocol::{self, classify, ChatProtocol, TurnAction};
use anyhow::Result;
use datasets::Episode;
use lm::chat::{ChatTemplate, Message};
use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::tokenizer::Tokenizer;
use lm::Policy;
use rayon::prelude::*;
use std::time::Instant;
use tools::{EpisodeView, Registry, ToolCall, World};

/// What episodes run against: the policy's tokenizer and chat template, the world and its
/// tools, and the loop's settings.
#[derive(Clone, Copy)]
pub struct AgentEnv<'a> {
    pub tok: &'a Tokenizer,
    pub chat: &'a ChatTemplate,
    pub world: &'a World,
    pub registry: &'a Registry,
    pub cfg: &'a AgentConfig,
}

impl<'a> AgentEnv<'a> {
    pub fn for_policy(
        policy: &'a Policy,
        world: &'a World,
        registry: &'a Registry,
        cfg: &'a AgentConfig,
    ) -> Self {
        Self {
            tok: &policy.tokenizer,
            chat: &policy.chat,
            world,
            registry,
            cfg,
        }
    }
}

/// Runs `episodes` (each `samples` times) to the end; rows come back in (episode, sample)
/// order. `seed` makes sampling reproducible: row (e, s) uses seed + e * samples + s.
pub fn run_agent(
    gen: &mut dyn Generator,
    env: &AgentEnv,
    episodes: &[&Episode],
    samples: usize,
    seed: u64,
) -> Result<Vec<AgentRow>> {
    let AgentEnv {
        tok,
        chat,
        world,
        registry,
        cfg,
    } = *env;
    let system = system_prompt(cfg.use_tools.then_some(registry), cfg.max_turns);
    let proto = ChatProtocol::new(chat);
    let stops = protocol::stops(cfg.use_tools);
    let mut rows: Vec<AgentRow> = Vec::new();
    let mut started: Vec<Instant> = Vec::new();
    let mut row_ids = Vec::new();
    for (e, ep) in episodes.iter().enumerate() {
        let view = EpisodeView::new(world, ep);
        let messages = vec![
            Message::system(system.clone()),
            Message::user(user_prompt(world, &view, cfg.prompt_history_len)),
        ];
        let text = proto.render(chat, &messages, true)?;
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
            let content = protocol::tool_response(&call.observation);
            let r = &mut rows[k];
            r.calls.push(call);
            let suffix = match proto.tool_suffix(chat, &r.messages, &content) {
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

/// Runs `episodes` x `samples` on the policy, at most `batch_rows` rows at a time, each batch
/// on a fresh engine bounded by the config's context; `on_batch` receives every batch's
/// episodes and rows as they finish (scoring, writing, progress). Seeds are those of one big
/// `run_agent` call: row (e, s) samples with seed + e * samples + s whatever the batching.
/// Evaluation, validation, GRPO rollouts and the `model` teacher all run through here.
pub fn run_batches(
    policy: &Policy,
    env: &AgentEnv,
    episodes: &[&Episode],
    samples: usize,
    batch_rows: usize,
    seed: u64,
    mut on_batch: impl FnMut(&[&Episode], Vec<AgentRow>) -> Result<()>,
) -> Result<()> {
    let samples = samples.max(1);
    let per_batch = (batch_rows / samples).max(1);
    for (b, chunk) in episodes.chunks(per_batch).enumerate() {
        let mut engine = Engine::new(&policy.model, &policy.tokenizer);
        engine.max_context = env.cfg.max_context;
        let first_row = (b * per_batch * samples) as u64;
        let rows = run_agent(
            &mut engine,
            env,
            chunk,
            samples,
            seed.wrapping_add(first_row),
        )?;
        on_batch(chunk, rows)?;
    }
    Ok(())
}
