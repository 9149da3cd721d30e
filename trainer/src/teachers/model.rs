//! The `model` teacher: any local HF checkpoint plays the agent through the rollout engine,
//! N samples per episode (the self-augmented path: sample, keep the best, train on it).

use super::{Candidate, Teacher, TeacherOutput};
use anyhow::Result;
use datasets::Episode;
use lm::device::{parse_device, parse_dtype};
use lm::progress::Progress;
use lm::Policy;
use rollout::{run_batches, AgentConfig, AgentEnv};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tools::{Registry, World};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTeacherConfig {
    /// Any HF directory (an export of an earlier run, or a base model).
    pub dir: PathBuf,
    /// Samples per episode (set agent.temperature > 0 for different samples).
    #[serde(default = "crate::config::defaults::four")]
    pub samples: usize,
    /// Rows generated together.
    #[serde(default = "crate::config::defaults::sixteen")]
    pub batch: usize,
    #[serde(default = "crate::config::defaults::cpu")]
    pub device: String,
    #[serde(default = "crate::config::defaults::f32")]
    pub dtype: String,
}

pub struct ModelTeacher {
    pub cfg: ModelTeacherConfig,
    pub agent: AgentConfig,
    pub seed: u64,
}

impl Teacher for ModelTeacher {
    fn conversations(
        &self,
        world: &World,
        reg: &Registry,
        episodes: &[&Episode],
        bar: &Progress,
    ) -> Result<TeacherOutput> {
        let m = &self.cfg;
        let policy = Policy::load(&m.dir, parse_device(&m.device)?, parse_dtype(&m.dtype)?)?;
        let env = AgentEnv::for_policy(&policy, world, reg, &self.agent);
        let mut all = Vec::new();
        run_batches(
            &policy,
            &env,
            episodes,
            m.samples,
            m.batch,
            self.seed,
            |chunk, rows| {
                let mut grouped: Vec<Vec<Candidate>> =
                    (0..chunk.len()).map(|_| Vec::new()).collect();
                for r in rows {
                    let bad = r.bad_calls();
                    grouped[r.episode].push(Candidate {
                        tool_calls: r.calls.len(),
                        bad_calls: bad,
                        messages: r.messages,
                    });
                }
                all.extend(grouped);
                bar.inc(chunk.len() as u64);
                Ok(())
            },
        )?;
        Ok(TeacherOutput {
            candidates: all,
            failed_episodes: 0,
        })
    }
}
