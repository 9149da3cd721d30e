//! The batched agent loop over a `Generator`.

use crate::config::AgentConfig;
use crate::constrained::AnswerConstraint;
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
/// Every row is in flight at once; `run_batches` bounds that.
pub fn run_agent(
    gen: &mut dyn Generator,
    env: &AgentEnv,
    episodes: &[&Episode],
    samples: usize,
    seed: u64,
) -> Result<Vec<AgentRow>> {
    let mut out: Vec<Option<AgentRow>> = vec![None; episodes.len() * samples];
    run_agent_continuous(gen, env, episodes, samples, seed, usize::MAX, |k, row| {
        out[k] = Some(row);
        Ok(())
    })?;
    Ok(out.into_iter().flatten().collect())
}

/// A row in flight: its index (e * samples + s), the generator's row id, its record and
/// when it was admitted.
struct Live {
    k: usize,
    id: usize,
    row: AgentRow,
    started: Instant,
}

/// The agent loop with continuous batching: at most `max_rows` rows in flight, admitted in
/// (episode, sample) order; a finished row (answer, call limit, context limit, error) leaves
/// and the next waiting one is admitted before the generator's next step. `done(k, row)`
/// receives each finished row, k = e * samples + s, in the order they finish (rows finishing
/// together in k order). Row k samples with seed + k, so results do not depend on
/// `max_rows` (up to the float noise of batch shapes).
pub fn run_agent_continuous(
    gen: &mut dyn Generator,
    env: &AgentEnv,
    episodes: &[&Episode],
    samples: usize,
    seed: u64,
    max_rows: usize,
    mut done: impl FnMut(usize, AgentRow) -> Result<()>,
) -> Result<()> {
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
    let total = episodes.len() * samples;
    let max_rows = max_rows.max(1);
    let answer_tokens = cfg
        .constrained_answers
        .then(|| AnswerConstraint::tokens_of(tok));
    let mut live: Vec<Live> = Vec::new();
    let mut next = 0;
    // The episode whose samples are being admitted: its messages and prompt tokens.
    let mut current: Option<(usize, Vec<Message>, Vec<i64>)> = None;
    loop {
        while live.len() < max_rows && next < total {
            let (e, s) = (next / samples, next % samples);
            if current.as_ref().is_none_or(|c| c.0 != e) {
                let view = EpisodeView::new(world, episodes[e]);
                let messages = vec![
                    Message::system(system.clone()),
                    Message::user(user_prompt(world, &view, cfg.prompt_history_len)),
                ];
                let text = proto.render(chat, &messages, true)?;
                let prompt = tok.encode(&text, false)?;
                current = Some((e, messages, prompt));
            }
            let (_, messages, prompt) = current.as_ref().expect("set above");
            let params = SamplingParams {
                temperature: cfg.temperature,
                top_k: cfg.top_k,
                top_p: cfg.top_p,
                max_new_tokens: cfg.max_new_tokens,
                stop: stops.clone(),
                seed: seed.wrapping_add(next as u64),
                ignore_eos: false,
                constraint: answer_tokens
                    .as_ref()
                    .map(|t| AnswerConstraint::shared(episodes[e].candidates.len(), t.clone())),
            };
            let id = gen.add(prompt, params)?;
            live.push(Live {
                k: next,
                id,
                started: Instant::now(),
                row: AgentRow {
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
                },
            });
            next += 1;
        }
        if live.is_empty() {
            return Ok(());
        }
        let ends = gen.advance()?;
        if ends.is_empty() {
            // The generator ran dry with rows open: they end without an answer.
            for l in &mut live {
                l.row.end.get_or_insert(EndReason::NoAnswer);
            }
        }
        let mut jobs: Vec<(usize, String)> = Vec::new();
        for end in ends {
            let Some(j) = live.iter().position(|l| l.id == end.row) else {
                continue;
            };
            let r = &mut live[j].row;
            r.messages.push(Message::assistant(end.text.clone()));
            match classify(&end.text, &end.reason, r.calls.len(), cfg.max_turns) {
                TurnAction::End(reason) => {
                    if reason == EndReason::Answer {
                        r.answer_text = Some(end.text.clone());
                    }
                    r.end = Some(reason);
                }
                TurnAction::Call(raw) => jobs.push((j, raw)),
            }
        }
        // Tools of all rows that called one run in parallel.
        let results: Vec<CallRecord> = jobs
            .par_iter()
            .map(|(j, raw)| call_tool(env, episodes, &live[*j].row, raw))
            .collect();
        for ((j, _), call) in jobs.into_iter().zip(results) {
            let content = protocol::tool_response(&call.observation);
            let l = &mut live[j];
            let r = &mut l.row;
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
            let (ids, _, _) = gen.record(l.id);
            if ids.len() + forced.len() + 1 > cfg.max_context {
                r.end = Some(EndReason::ContextFull);
                continue;
            }
            gen.resume(l.id, &forced)?;
        }
        // Finished rows leave (in k order), freeing their places for waiting ones.
        let mut finished: Vec<Live> = Vec::new();
        let mut j = 0;
        while j < live.len() {
            if live[j].row.end.is_some() {
                finished.push(live.swap_remove(j));
            } else {
                j += 1;
            }
        }
        live.sort_by_key(|l| l.k);
        finished.sort_by_key(|l| l.k);
        for mut l in finished {
            close(gen, l.id, &mut l.row, l.started);
            done(l.k, l.row)?;
        }
    }
}

/// Runs one tool call of row `r` and records it (duplicates and disabled tools included).
fn call_tool(env: &AgentEnv, episodes: &[&Episode], r: &AgentRow, raw: &str) -> CallRecord {
    let AgentEnv {
        world,
        registry,
        cfg,
        ..
    } = *env;
    let view = EpisodeView::new(world, episodes[r.episode]);
    let parsed = ToolCall::parse(raw).ok();
    let duplicate = parsed.as_ref().is_some_and(|p| {
        r.calls.iter().any(|c| {
            c.ok && c.name.as_deref() == Some(&p.name) && c.arguments.as_ref() == Some(&p.arguments)
        })
    });
    let obs = if !cfg.use_tools {
        tools::Observation {
            text: "Error: tools are disabled in this run; answer from the prompt.".into(),
            ok: false,
        }
    } else {
        lm::profile::time("tools", || registry.call_text(world, &view, raw))
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
}

/// Releases the row and moves its token record (ids, mask, log-probs) into `r`.
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
    gen.forget(row);
}

/// Runs `episodes` x `samples` on the policy through one engine with continuous batching: at
/// most `batch_rows` rows in flight (so cache memory is bounded by `batch_rows` slots, plus
/// the engine's stored prefixes, not by the episode count); as soon as a row finishes, the
/// next waiting (episode, sample) takes its place, and every new row reuses the cached
/// system prompt (the engine's prefix cache). The engine lives for this call only: weights
/// must not change during it (GRPO makes a new one per rollout).
///
/// `on_batch` receives the episodes in chunks of `max(batch_rows / samples, 1)`, in order,
/// each with its rows in (episode, sample) order and `row.episode` indexing the chunk, as
/// soon as all of the chunk's rows (and those of every earlier chunk) finished; rows of later
/// chunks that finish first wait on the host. Seeds are those of one big `run_agent` call:
/// row (e, s) samples with seed + e * samples + s whatever `batch_rows`.
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
    let chunk_rows = per_batch * samples;
    let mut engine = Engine::new(&policy.model, &policy.tokenizer);
    engine.max_context = env.cfg.max_context;
    // Finished rows of chunks not yet reported, by chunk.
    let mut waiting: Vec<Vec<Option<AgentRow>>> = Vec::new();
    let mut reported = 0;
    run_agent_continuous(
        &mut engine,
        env,
        episodes,
        samples,
        seed,
        batch_rows.max(1),
        |k, mut row| {
            let b = k / chunk_rows;
            if waiting.len() <= b {
                waiting.resize_with(b + 1, Vec::new);
            }
            let first = b * per_batch;
            let chunk = &episodes[first..(first + per_batch).min(episodes.len())];
            let bin = &mut waiting[b];
            if bin.is_empty() {
                bin.resize(chunk.len() * samples, None);
            }
            row.episode -= first;
            bin[k - b * chunk_rows] = Some(row);
            while reported < waiting.len()
                && !waiting[reported].is_empty()
                && waiting[reported].iter().all(Option::is_some)
            {
                let first = reported * per_batch;
                let chunk = &episodes[first..(first + per_batch).min(episodes.len())];
                let rows = std::mem::take(&mut waiting[reported]);
                on_batch(chunk, rows.into_iter().flatten().collect())?;
                reported += 1;
            }
            Ok(())
        },
    )?;
    if lm::profile::enabled() {
        for (name, n) in [
            ("engine.forward_calls", engine.forward_calls),
            ("engine.prefilled_tokens", engine.prefilled_tokens),
            ("engine.fed_tokens_saved", engine.fed_tokens_saved),
            ("engine.prefix_tokens_reused", engine.prefix_tokens_reused),
            ("engine.cache_slots", engine.cache_slots()),
            ("engine.in_place_forwards", engine.in_place_forwards),
        ] {
            lm::profile::count(name, n as u64);
        }
    }
    Ok(())
}
