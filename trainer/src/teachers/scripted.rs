//! The `scripted` teacher: a program that plays the Analyze-Plan-Act protocol. It states
//! what it is missing, calls the tools that fill it (real observations from the registry),
//! and ranks by a fusion of the evidence those calls gathered.

use super::{Candidate, Teacher, TeacherOutput};
use anyhow::Result;
use datasets::Episode;
use indicatif::ProgressBar;
use lm::chat::Message;
use rayon::prelude::*;
use rollout::prompt::{system_prompt, user_prompt};
use rollout::protocol;
use serde_json::json;
use std::collections::HashMap;
use tools::{EpisodeView, Registry, ToolCall, World};

pub struct Scripted {
    pub history_len: usize,
    pub max_turns: usize,
}

impl Teacher for Scripted {
    fn conversations(
        &self,
        world: &World,
        reg: &Registry,
        episodes: &[&Episode],
        bar: &ProgressBar,
    ) -> Result<TeacherOutput> {
        let candidates = episodes
            .par_iter()
            .map(|ep| {
                let c = scripted(world, reg, ep, self.history_len, self.max_turns);
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

/// z-scores over the candidates (0 when all equal).
fn z(v: &[f64]) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    v.iter()
        .map(|x| if sd < 1e-12 { 0.0 } else { (x - mean) / sd })
        .collect()
}

/// The evidence behind each tool, per candidate, as the scripted teacher reads it.
struct Evidence {
    similar: Vec<f64>,
    genre: Vec<f64>,
    co_liked: Vec<f64>,
}

fn evidence(w: &World, ep: &EpisodeView) -> Evidence {
    let neighbors: Vec<u32> = ep
        .knowledge
        .models
        .userknn
        .neighbors
        .of(ep.user)
        .take(10)
        .map(|(v, _)| v)
        .collect();
    let similar = ep
        .candidates
        .iter()
        .map(|&c| {
            neighbors
                .iter()
                .flat_map(|&v| ep.knowledge.sequences[v as usize].iter())
                .filter(|e| e.item == c)
                .map(|e| e.rating as f64 / 5.0)
                .sum()
        })
        .collect();
    let mut taste: HashMap<&str, f64> = HashMap::new();
    for e in ep.history {
        for g in &w.data.items[e.item as usize].meta.categories {
            *taste.entry(g.as_str()).or_default() += e.rating as f64;
        }
    }
    let total: f64 = taste.values().sum::<f64>().max(1.0);
    let genre = ep
        .candidates
        .iter()
        .map(|&c| {
            w.data.items[c as usize]
                .meta
                .categories
                .iter()
                .map(|g| taste.get(g.as_str()).copied().unwrap_or(0.0) / total)
                .sum()
        })
        .collect();
    let recent: Vec<u32> = ep.history.iter().rev().take(50).map(|e| e.item).collect();
    let co_liked = ep
        .candidates
        .iter()
        .map(|&c| {
            recent
                .iter()
                .map(|&h| ep.knowledge.models.cooc.sim(h, c) as f64)
                .sum()
        })
        .collect();
    Evidence {
        similar,
        genre,
        co_liked,
    }
}

/// The scripted teacher: three plans of increasing length, each ranking by a fusion of the
/// evidence its calls gathered.
pub fn scripted(
    w: &World,
    reg: &Registry,
    ep: &Episode,
    history_len: usize,
    max_turns: usize,
) -> Vec<Candidate> {
    let view = EpisodeView::new(w, ep);
    let ev = evidence(w, &view);
    let n = ep.candidates.len();
    let (zs, zg, zc) = (z(&ev.similar), z(&ev.genre), z(&ev.co_liked));
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
    let plans: [&[&str]; 3] = [
        &["similar_users"],
        &["user_profile", "similar_users"],
        &["user_profile", "similar_users", "item_relations"],
    ];
    let mut out = Vec::new();
    for plan in plans {
        let mut messages = head.clone();
        let mut bad = 0;
        let mut scores = vec![0.0f64; n];
        let mut reasons: Vec<String> = Vec::new();
        for (step, tool) in plan.iter().enumerate() {
            let (think, args) = match *tool {
                "user_profile" => (
                    format!("The latest items are {}. I do not yet know the user's overall taste, so I check their profile first.", last.join(", ")),
                    json!({}),
                ),
                "similar_users" => (
                    if step == 0 {
                        format!("The user recently watched {}. What matters most is which candidates people with similar taste liked, so I ask similar users about the candidates.", last.join(", "))
                    } else {
                        "Now I need collaborative evidence: which candidates did users with similar taste interact with?".to_string()
                    },
                    json!({"k": 10, "only_candidates": true}),
                ),
                _ => {
                    let top = (0..n).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap_or(0);
                    (format!("Candidate {} leads so far; I check how it relates to what the user liked before.", top + 1), json!({"candidate": top + 1, "relation": "co_liked"}))
                }
            };
            let obs = reg.call(w, &view, &ToolCall::new(tool, args.clone()));
            bad += usize::from(!obs.ok);
            messages.push(Message::assistant(protocol::call_turn(&think, tool, args)));
            messages.push(Message::tool(protocol::tool_response(&obs.text)));
            match *tool {
                "similar_users" => {
                    scores.iter_mut().zip(&zs).for_each(|(s, x)| *s += 1.0 * x);
                    reasons.push("interest from similar users".into());
                }
                "user_profile" => {
                    scores.iter_mut().zip(&zg).for_each(|(s, x)| *s += 0.5 * x);
                    reasons.push("fit with the user's favourite genres".into());
                }
                _ => {
                    scores.iter_mut().zip(&zc).for_each(|(s, x)| *s += 0.7 * x);
                    reasons.push(
                        "how often each candidate is liked together with the user's recent items"
                            .into(),
                    );
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let best: Vec<String> = order
            .iter()
            .take(3)
            .map(|&i| format!("{} ({})", i + 1, w.title(ep.candidates[i])))
            .collect();
        let ranking: Vec<usize> = order.iter().map(|i| i + 1).collect();
        messages.push(Message::assistant(protocol::answer_turn(
            &format!(
                "Combining {}: the strongest candidates are {}. I rank the rest by the same evidence.",
                reasons.join(", "),
                best.join(", ")
            ),
            &ranking,
        )));
        out.push(Candidate {
            messages,
            tool_calls: plan.len(),
            bad_calls: bad,
        });
    }
    out
}
