//! The `scripted` teacher: a program that plays the Analyze-Plan-Act protocol with real tool
//! calls. Its ranking is the collaborative evidence fused by `rank_candidates` (weights fit
//! on training episodes, the evidence preset chosen per history length on validation:
//! `tools::fusion`), so the student learns to gather evidence and copy a strong ranking; its
//! plans adapt to the user (short histories: similar users' taste; longer ones: what they
//! watched last) and come in three lengths, so the SFT set is not one plan.
//!
//! With `explore_presets` (synth config) the teacher also explores its evidence: every plan
//! is written once per `rank_candidates` preset, and the rejection filter keeps the best
//! per episode (rejection sampling over the teacher's choices, as self-augmented SFT sets
//! are built). The student then learns every preset and when each won in hindsight; GRPO
//! learns which one pays on average.

use super::{Candidate, Teacher, TeacherOutput};
use anyhow::Result;
use datasets::Episode;
use lm::chat::Message;
use lm::progress::Progress;
use rayon::prelude::*;
use rollout::prompt::{system_prompt, user_prompt};
use rollout::protocol;
use serde_json::{json, Value};
use tools::fusion::Preset;
use tools::{EpisodeView, Registry, ToolCall, World};

pub struct Scripted {
    pub history_len: usize,
    pub max_turns: usize,
    /// Write every plan with each evidence preset, not only the one validation chose.
    pub explore_presets: bool,
}

impl Teacher for Scripted {
    fn conversations(
        &self,
        world: &World,
        reg: &Registry,
        episodes: &[&Episode],
        bar: &Progress,
    ) -> Result<TeacherOutput> {
        world.preset_for(0); // fit and choose once, before the parallel episodes need it
        let candidates = episodes
            .par_iter()
            .map(|ep| {
                let c = if self.explore_presets {
                    Preset::ALL
                        .iter()
                        .flat_map(|&p| {
                            scripted_with(world, reg, ep, self.history_len, self.max_turns, p)
                        })
                        .collect()
                } else {
                    scripted(world, reg, ep, self.history_len, self.max_turns)
                };
                bar.inc(1);
                c
            })
            .collect();
        Ok(TeacherOutput {
            candidates,
            failed_episodes: 0,
        })
    }
}

/// One tool call of a plan: the reasoning before it, the tool and its arguments.
struct Step {
    think: String,
    tool: &'static str,
    args: Value,
}

/// The scripted teacher's plans for one episode, shortest first; each ends with the ranking
/// `rank_candidates` returns for the preset validation chose for this user's history length.
pub fn scripted(
    w: &World,
    reg: &Registry,
    ep: &Episode,
    history_len: usize,
    max_turns: usize,
) -> Vec<Candidate> {
    let preset = w.preset_for(EpisodeView::new(w, ep).history.len());
    scripted_with(w, reg, ep, history_len, max_turns, preset)
}

/// The scripted teacher's plans for one episode, shortest first, each ending with the
/// ranking `rank_candidates` returns for `preset`.
pub fn scripted_with(
    w: &World,
    reg: &Registry,
    ep: &Episode,
    history_len: usize,
    max_turns: usize,
    preset: Preset,
) -> Vec<Candidate> {
    let view = EpisodeView::new(w, ep);
    let fusion = w.fusion();
    let n_hist = view.history.len();
    let short = fusion.bucket(n_hist) == 0;
    let head = vec![
        Message::system(system_prompt(Some(reg), max_turns)),
        Message::user(user_prompt(w, &view, history_len)),
    ];
    let last: Vec<String> = view
        .history
        .iter()
        .rev()
        .take(3)
        .map(|e| w.title(e.item))
        .collect();
    let situation = if short {
        format!("The user has only {n_hist} items in their history, so what users with similar taste liked and what tends to follow their latest items say the most.")
    } else {
        format!(
            "The user has {n_hist} items in their history, most recently {}: both their long-term taste and what they watched last matter.",
            last.join(", ")
        )
    };
    let rank = |think: String| Step {
        think,
        tool: "rank_candidates",
        args: json!({"by": preset.name()}),
    };
    let context: Step = if short {
        Step {
            think: format!("{situation} I first check which candidates similar users had."),
            tool: "similar_users",
            args: json!({"k": 10, "only_candidates": true}),
        }
    } else {
        Step {
            think: format!("{situation} I first look at their most recent items."),
            tool: "user_history",
            args: json!({"order": "recent", "limit": 5}),
        }
    };
    let rank_now = format!(
        "{situation} rank_candidates fuses the models' evidence for me; I ask for the candidates ranked by {}.",
        evidence(preset)
    );
    let rank_after = format!(
        "Now I ask for the candidates ranked by {}.",
        evidence(preset)
    );
    let plans: Vec<Vec<Step>> = vec![
        vec![rank(rank_now)],
        vec![context, rank(rank_after.clone())],
        vec![
            Step {
                think: "I start with who the user is: their profile and favourite genres."
                    .to_string(),
                tool: "user_profile",
                args: json!({}),
            },
            if short {
                Step {
                    think: "Their history is short, so I check which candidates similar users had."
                        .to_string(),
                    tool: "similar_users",
                    args: json!({"k": 10, "only_candidates": true}),
                }
            } else {
                Step {
                    think: "Next, what they watched most recently.".to_string(),
                    tool: "user_history",
                    args: json!({"order": "recent", "limit": 5}),
                }
            },
            rank(rank_after),
        ],
    ];
    let fused = fusion.fuse(&view, preset);
    let order = fused.order();
    let ranking: Vec<usize> = order.iter().map(|i| i + 1).collect();
    let best: Vec<String> = order
        .iter()
        .take(3)
        .map(|&i| format!("{} ({})", i + 1, w.title(ep.candidates[i])))
        .collect();
    let answer = protocol::answer_turn(
        &format!(
            "The evidence ranks {} highest; I follow its order.",
            best.join(", ")
        ),
        &ranking,
    );
    plans
        .into_iter()
        .map(|plan| {
            let mut messages = head.clone();
            let mut bad = 0;
            let calls = plan.len();
            for step in plan {
                let obs = reg.call(w, &view, &ToolCall::new(step.tool, step.args.clone()));
                bad += usize::from(!obs.ok);
                messages.push(Message::assistant(protocol::call_turn(
                    &step.think,
                    step.tool,
                    step.args,
                )));
                messages.push(Message::tool(protocol::tool_response(&obs.text)));
            }
            messages.push(Message::assistant(answer.clone()));
            Candidate {
                messages,
                tool_calls: calls,
                bad_calls: bad,
            }
        })
        .collect()
}

/// The evidence a plan asks for, as its reasoning names it: the preset's own name first, so
/// the choice is one token (" all", " collaborative", " sequential", " popular" are single
/// SmolLM2 tokens; `scripts/choice_probs.py` reads their probabilities). When three presets
/// began with "what ...", greedy decoding committed to "what" before they separated.
fn evidence(preset: Preset) -> &'static str {
    match preset {
        Preset::All => "all evidence, every model fused",
        Preset::Collaborative => "collaborative evidence, what users with similar taste liked",
        Preset::Sequential => "sequential evidence, what tends to follow their latest items",
        Preset::Popular => {
            "popular evidence, what is widely watched and co-watched with their history"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_preset_is_named_by_its_first_word() {
        for p in Preset::ALL {
            let first = evidence(p).split([' ', ',']).next();
            assert_eq!(first, Some(p.name()), "{p:?}");
        }
    }
}
