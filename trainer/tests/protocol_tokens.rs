//! A teacher's conversation, tokenized for SFT, must be token for token what the agent loop
//! produces when the policy plays the same turns: otherwise SFT trains on text the model
//! never sees at rollout. Checked on real MovieLens-100k tool observations under three chat
//! templates: SmolLM2's (tool messages as they are), Qwen2.5's and Qwen3's (they wrap tool
//! messages in `<tool_response>` themselves; Qwen3 also moves `<think>` blocks).

use testkit as support;

use datasets::{Split, Subset};
use lm::chat::ChatTemplate;
use lm::tokenizer::Tokenizer;
use rollout::scripted::Scripted;
use rollout::{run_agent, AgentConfig, AgentEnv};
use support::*;
use tools::World;
use trainer::sequence::tokenize_conversation;
use trainer::teachers::scripted::scripted;

fn world() -> World {
    testkit::world::ml100k_world()
}

#[test]
fn teacher_conversations_tokenize_as_rollouts_under_every_template() {
    let dir = base_model();
    let tok = Tokenizer::from_dir(&dir, &[2]).unwrap();
    let w = world();
    let cfg = AgentConfig {
        max_new_tokens: 4096,
        max_context: 1 << 16,
        ..Default::default()
    };
    let reg = tools::suite::standard(cfg.tool_max_chars);
    let eps: Vec<_> = w
        .data
        .select(Split::Train, Subset::All)
        .into_iter()
        .take(3)
        .collect();
    // The teacher's longest plan (three tool calls, then the answer) on each episode.
    let conversations: Vec<_> = eps
        .iter()
        .map(|ep| {
            scripted(&w, &reg, ep, cfg.prompt_history_len, cfg.max_turns)
                .pop()
                .expect("the scripted teacher plays three plans")
                .messages
        })
        .collect();
    let eos = tok.eos_ids[0];
    let templates = [
        ("smollm2", tok.chat_template(&dir).unwrap().unwrap()),
        ("qwen2.5", template("qwen2.5")),
        ("qwen3", template("qwen3")),
    ];
    for (name, source) in templates {
        let chat = ChatTemplate::new(Some(source), None, Some("<|im_end|>".into())).unwrap();
        let scripts: Vec<Vec<String>> = conversations
            .iter()
            .map(|m| {
                m.iter()
                    .filter(|m| m.role == "assistant")
                    .map(|m| m.content.clone())
                    .collect()
            })
            .collect();
        let mut gen = Scripted::new(&tok, scripts, cfg.max_context);
        let env = AgentEnv {
            tok: &tok,
            chat: &chat,
            world: &w,
            registry: &reg,
            cfg: &cfg,
        };
        let rows = run_agent(&mut gen, &env, &eps, 1, 0).unwrap();
        for (row, messages) in rows.iter().zip(&conversations) {
            assert_eq!(
                row.calls.len(),
                3,
                "{name}: the rollout made the teacher's calls"
            );
            assert!(row.calls.iter().all(|c| c.ok), "{name}: {:?}", row.calls);
            assert_eq!(
                &row.messages, messages,
                "{name}: the rollout stores the conversation as the teacher does"
            );
            let sft = tokenize_conversation(&tok, &chat, messages).unwrap();
            // SFT also trains the end of the final turn (EOS); the rollout stopped on
            // `</answer>` just before it. Everything else must be the same tokens.
            assert_eq!(sft.ids.len(), row.ids.len() + 1, "{name}: lengths");
            assert_eq!(sft.ids[row.ids.len()], eos);
            assert_eq!(&sft.ids[..row.ids.len()], &row.ids[..], "{name}: token ids");
            assert_eq!(
                &sft.mask[..row.mask.len()],
                &row.mask[..],
                "{name}: loss masks"
            );
            // Each observation is wrapped exactly once (the system prompt names the tag too).
            let text = tok.decode(&row.ids[row.prompt_tokens..], false).unwrap();
            assert_eq!(
                text.matches("<tool_response>").count(),
                3,
                "{name}: one <tool_response> per tool message in\n{text}"
            );
        }
    }
}
