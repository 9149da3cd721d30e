//! Our model against HF transformers: logits, greedy generation and chat rendering.

use testkit as support;

use lm::chat::Message;
use lm::engine::Engine;
use lm::sampling::SamplingParams;
use lm::Policy;
use std::path::Path;
use support::*;
use tch::{Device, Kind, Tensor};

fn read_tensor(path: &Path, name: &str) -> Tensor {
    let tensors = Tensor::read_safetensors(path).expect("reading reference safetensors");
    tensors
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .expect("tensor present")
}

fn logits_parity(model_dir: &Path, prompt: &str, tol: f64) {
    let tmp = scratch("logits");
    let out = tmp.join("ref.safetensors");
    hf_ref(&[
        "logits",
        model_dir.to_str().unwrap(),
        prompt,
        out.to_str().unwrap(),
    ]);
    let reference = read_tensor(&out, "logits");
    let ref_ids = read_tensor(&out, "input_ids");
    let policy = Policy::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let ids = policy.tokenizer.encode(prompt, true).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&ref_ids).unwrap(),
        ids,
        "tokenization differs from transformers"
    );
    let ours = tch::no_grad(|| policy.model.forward(&Tensor::from_slice(&ids).unsqueeze(0)))
        .squeeze_dim(0);
    assert_eq!(ours.size(), reference.size());
    let diff = max_abs_diff(&ours, &reference);
    eprintln!(
        "{}: max |logit diff| = {diff:.3e} over {} tokens",
        model_dir.display(),
        ids.len()
    );
    assert!(diff <= tol, "max |diff| {diff} > {tol}");
}

const PROMPT: &str = "The user rated Toy Story 5/5 and Heat 2/5. Rank: 1. Casino 2. Fargo";

#[test]
fn tiny_qwen2_logits_match_transformers() {
    logits_parity(&tiny_model("qwen2"), PROMPT, 1e-4);
}

#[test]
fn tiny_llama_logits_match_transformers() {
    logits_parity(&tiny_model("llama"), PROMPT, 1e-4);
}

#[test]
fn smollm2_logits_and_greedy_match_transformers() {
    let dir = base_model();
    logits_parity(&dir, PROMPT, 1e-3);

    // Prompts whose answers run past 32 tokens; both sides stop at EOS otherwise.
    let prompts = [
        "Write a short story about a robot who learns to paint.",
        "Explain how a movie recommendation system works.",
    ];
    let tmp = scratch("greedy");
    let out = tmp.join("greedy.json");
    let mut args = vec!["greedy", dir.to_str().unwrap(), "32", out.to_str().unwrap()];
    args.extend(prompts);
    hf_ref(&args);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let policy = Policy::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let mut engine = Engine::new(&policy.model, &policy.tokenizer);
    let params = SamplingParams {
        max_new_tokens: 32,
        ..Default::default()
    };
    let mut rows = Vec::new();
    for (p, r) in prompts.iter().zip(reference.as_array().unwrap()) {
        let ids = policy.chat_prompt_ids(&[Message::user(*p)]).unwrap();
        let ref_prompt: Vec<i64> = serde_json::from_value(r["prompt_ids"].clone()).unwrap();
        assert_eq!(
            ids, ref_prompt,
            "chat prompt ids differ from apply_chat_template"
        );
        rows.push(engine.add_row(&ids, params.clone()).unwrap());
    }
    engine.run().unwrap();
    for (row, r) in rows.iter().zip(reference.as_array().unwrap()) {
        let ours: Vec<i64> = engine.row(*row).generated_ids().collect();
        let theirs: Vec<i64> = serde_json::from_value(r["generated"].clone()).unwrap();
        assert_eq!(ours.len(), 32, "expected a 32-token answer");
        assert_eq!(ours, theirs, "greedy tokens differ");
    }
}

fn chat_parity(model_dir: &Path, messages: &[Message]) {
    let dir = scratch("chat");
    let msgs = dir.join("messages.json");
    std::fs::write(&msgs, serde_json::to_string(messages).unwrap()).unwrap();
    let out = dir.join("chat.txt");
    hf_ref(&[
        "chat",
        model_dir.to_str().unwrap(),
        msgs.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let theirs = std::fs::read_to_string(&out).unwrap();
    let policy = Policy::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let ours = policy.chat.render(messages, true, None).unwrap();
    assert_eq!(ours, theirs);
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You rank movies. Use tools."),
        Message::user("User 42. Candidates: 1. Heat (1995) 2. Fargo (1996)"),
        Message::assistant("<think>I need the history.</think>\n<tool_call>{\"name\": \"user_history\", \"arguments\": {}}</tool_call>"),
        Message::tool("<tool_response>Toy Story (1995), 5 stars</tool_response>"),
    ]
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    chat_parity(&base_model(), &conversation());
    // Without a system message the template inserts its own default.
    chat_parity(&base_model(), &conversation()[1..]);
}

/// A Qwen2.5-style template (namespaces, loops with loop.last/index, startswith, tojson,
/// whitespace control) rendered by Jinja2 in transformers and by us.
const QWEN_STYLE_TEMPLATE: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(tools=0) %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content.strip() + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- set ns.tools = ns.tools + 1 %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
{{- '' if ns.tools < 100 else ({'n': ns.tools} | tojson) }}"#;

#[test]
fn qwen_style_chat_template_matches_transformers() {
    let src = tiny_model("qwen2");
    let tmp = scratch("qwen-template");
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("chat_template.jinja"), QWEN_STYLE_TEMPLATE).unwrap();
    let mut messages = conversation();
    messages.push(Message::tool("second result"));
    messages.push(Message::user("  now rank  "));
    chat_parity(&dir, &messages);
}
