//! The prompts: a system prompt stating the Analyze-Plan-Act protocol and the tools, and a
//! user prompt with the user id, the last `prompt_history_len` history items and the
//! numbered candidates.

use crate::protocol::{ANSWER, THINK, TOOL_CALL, TOOL_RESPONSE};
use tools::{EpisodeView, Registry, World};

pub fn system_prompt(registry: Option<&Registry>, max_turns: usize) -> String {
    let (think, think_end) = THINK;
    let (answer, answer_end) = ANSWER;
    let (call, call_end) = TOOL_CALL;
    let (response, response_end) = TOOL_RESPONSE;
    match registry {
        Some(reg) => format!(
            "You are a recommendation agent. You rank the candidate items for a user, best first.\n\
Work in Analyze-Plan-Act steps:\n\
1. Analyze: inside {think}...{think_end}, say what you know about the user and the candidates and what information is missing.\n\
2. Act: to fill a gap, call exactly one tool per turn, for example {call}{{\"name\": \"item_info\", \"arguments\": {{\"candidate\": 2}}}}{call_end}. The result comes back in {response}...{response_end}.\n\
3. Answer: when you know enough, give all candidate numbers, best first, as {answer}3, 1, 7, ...{answer_end}.\n\
Use at most {max_turns} tool calls.\n\
Tools:\n{}",
            reg.describe()
        ),
        None => format!("You are a recommendation agent. You rank the candidate items for a user, best first, from the information given.\n\
Think inside {think}...{think_end}, then give all candidate numbers, best first, as {answer}3, 1, 7, ...{answer_end}."),
    }
}

pub fn user_prompt(w: &World, ep: &EpisodeView, history_len: usize) -> String {
    let user = &w.data.users[ep.user as usize];
    let mut s = format!("User {}.\n", user.raw_id);
    let recent = &ep.history[ep.history.len().saturating_sub(history_len)..];
    if recent.is_empty() {
        s.push_str("No history.\n");
    } else {
        s.push_str(&format!(
            "Most recent {} of {} history items (oldest first):\n",
            recent.len(),
            ep.history.len()
        ));
        for e in recent {
            s.push_str(&format!(
                "- {} (rated {})\n",
                w.item_line(e.item, 3),
                e.rating
            ));
        }
    }
    s.push_str("Candidates:\n");
    for (i, &c) in ep.candidates.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", i + 1, w.item_line(c, 3)));
    }
    s.push_str(&format!("Rank all {} candidates.", ep.candidates.len()));
    s
}
