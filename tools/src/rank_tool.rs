//! `rank_candidates`, the sixth tool: the candidates ordered by the collaborative models'
//! evidence (BPR, SASRec, EASE, co-occurrence, what other users watched next, similar users,
//! popularity), fused with weights fit
//! on training episodes (`fusion.rs`). The order comes first and is compact, so that using
//! it is copying, not arithmetic; the strongest candidates follow with the signals behind
//! them.

use crate::fusion::Preset;
use crate::registry::{Args, Tool};
use crate::world::{EpisodeView, World};
use serde_json::{json, Value};

pub struct RankCandidates;

impl Tool for RankCandidates {
    fn name(&self) -> &'static str {
        "rank_candidates"
    }
    fn description(&self) -> &'static str {
        "The candidates ranked by collaborative-filtering models, strongest first: by all evidence fused, or only collaborative (similar users, BPR, EASE), sequential (what follows the user's recent items) or popular evidence."
    }
    fn parameters(&self) -> Value {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        json!({"type": "object", "properties": {
            "by": {"type": "string", "enum": names, "description": "which evidence, default all"}
        }, "required": []})
    }
    fn call(&self, w: &World, ep: &EpisodeView, args: &Args) -> Result<String, String> {
        let by = args.get("by").and_then(Value::as_str).unwrap_or("all");
        let preset = Preset::parse(by).ok_or_else(|| format!("unknown evidence \"{by}\""))?;
        if ep.candidates.is_empty() {
            return Ok("No candidates.".into());
        }
        let fused = w.fusion().fuse(ep, preset);
        let order = fused.order();
        let list: Vec<String> = order.iter().map(|i| (i + 1).to_string()).collect();
        let strongest: Vec<String> = order
            .iter()
            .take(3)
            .map(|&i| {
                // The two signals that speak most for this candidate.
                let mut by: Vec<(f64, String)> = fused
                    .signals
                    .iter()
                    .zip(&fused.z)
                    .map(|(s, z)| (z[i], format!("{} {:+.1}", s.name(), z[i])))
                    .collect();
                by.sort_by(|a, b| b.0.total_cmp(&a.0));
                let why: Vec<String> = by.into_iter().take(2).map(|(_, t)| t).collect();
                format!(
                    "{} {} ({})",
                    i + 1,
                    w.title(ep.candidates[i]),
                    why.join(", ")
                )
            })
            .collect();
        Ok(format!(
            "Ranking by {}: {}\nStrongest: {}.",
            preset.describe(),
            list.join(", "),
            strongest.join("; ")
        ))
    }
}
