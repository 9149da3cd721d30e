//! A conversation (system, user, assistant, tool, ...) as training tokens: ids and a loss
//! mask, laid out exactly as the agent loop lays out a rollout (prompt and tool messages are
//! context with mask 0; assistant turns and the final end-of-turn token have mask 1).

use anyhow::{bail, Context, Result};
use lm::chat::{ChatTemplate, Message};
use lm::tokenizer::Tokenizer;
use rollout::ChatProtocol;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenSequence {
    pub ids: Vec<i64>,
    pub mask: Vec<u8>,
}

pub fn tokenize_conversation(
    tok: &Tokenizer,
    chat: &ChatTemplate,
    messages: &[Message],
) -> Result<TokenSequence> {
    let first_assistant = messages
        .iter()
        .position(|m| m.role == "assistant")
        .context("conversation has no assistant turn")?;
    let proto = ChatProtocol::new(chat);
    let prompt = proto.render(chat, &messages[..first_assistant], true)?;
    let mut ids = tok.encode(&prompt, false)?;
    let mut mask = vec![0u8; ids.len()];
    let eos = tok
        .eos_token
        .as_deref()
        .and_then(|t| tok.token_to_id(t))
        .or_else(|| tok.eos_ids.first().copied())
        .context("tokenizer has no EOS token")?;
    let mut k = first_assistant;
    while k < messages.len() {
        let m = &messages[k];
        if m.role != "assistant" {
            bail!(
                "message {k}: expected an assistant turn, found `{}`",
                m.role
            );
        }
        let turn = tok.encode(&m.content, false)?;
        mask.extend(std::iter::repeat_n(1, turn.len()));
        ids.extend(turn);
        match messages.get(k + 1) {
            Some(next) if next.role == "tool" => {
                let suffix = proto.tool_suffix(chat, &messages[..=k], &next.content)?;
                let forced = tok.encode(&suffix, false)?;
                mask.extend(std::iter::repeat_n(0, forced.len()));
                ids.extend(forced);
                k += 2;
            }
            Some(next) => bail!(
                "message {}: expected a tool message after an assistant turn, found `{}`",
                k + 1,
                next.role
            ),
            None => {
                ids.push(eos);
                mask.push(1);
                k += 1;
            }
        }
    }
    Ok(TokenSequence { ids, mask })
}
