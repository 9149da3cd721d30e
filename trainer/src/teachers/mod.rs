//! Teachers write the conversations that SFT learns from. Each one plays the agent on
//! training episodes and returns, per episode, its candidate conversations; the rejection
//! filter in `synth` keeps the best. Three kinds: `scripted` (a program), `model` (a local
//! checkpoint through the rollout engine) and `openai` (an OpenAI-compatible endpoint).

pub mod model;
pub mod openai;
pub mod scripted;

use anyhow::Result;
use datasets::Episode;
use lm::chat::Message;
use lm::progress::Progress;
use tools::{Registry, World};

/// A teacher's conversation for one episode, in the protocol's turn format (assistant turns
/// end with `</tool_call>` or `</answer>`; tool turns hold `<tool_response>` blocks).
pub struct Candidate {
    pub messages: Vec<Message>,
    pub tool_calls: usize,
    pub bad_calls: usize,
}

pub struct TeacherOutput {
    /// One list per episode, in episode order (possibly empty).
    pub candidates: Vec<Vec<Candidate>>,
    /// Episodes the teacher could not play at all (e.g. an endpoint that kept failing).
    pub failed_episodes: usize,
}

pub trait Teacher {
    /// Plays `episodes`, advancing `bar` by one per finished episode.
    fn conversations(
        &self,
        world: &World,
        reg: &Registry,
        episodes: &[&Episode],
        bar: &Progress,
    ) -> Result<TeacherOutput>;
}
