//! The agent loop's settings, with their defaults in one place (the CLI, the configs and the
//! trainers all start from `AgentConfig::default()`).

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
    /// Decode answers constrained to a permutation of the candidate indices
    /// (`crate::constrained`); off by default, reported in rows of its own.
    pub constrained_answers: bool,
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
            constrained_answers: false,
        }
    }
}
