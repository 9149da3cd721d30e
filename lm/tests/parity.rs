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

/// Max |ours - theirs| relative to max |theirs|, for the new families' logit checks.
fn relative_logits_parity(model_dir: &Path, tol: f64) -> f64 {
    let tmp = scratch("rel-logits");
    let out = tmp.join("ref.safetensors");
    hf_ref(&[
        "logits",
        model_dir.to_str().unwrap(),
        PROMPT,
        out.to_str().unwrap(),
    ]);
    let reference = read_tensor(&out, "logits");
    let policy = Policy::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let ids = policy.tokenizer.encode(PROMPT, true).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(&read_tensor(&out, "input_ids")).unwrap(),
        ids
    );
    let ours = tch::no_grad(|| policy.model.forward(&Tensor::from_slice(&ids).unsqueeze(0)))
        .squeeze_dim(0);
    let abs = max_abs_diff(&ours, &reference);
    let rel = abs / reference.abs().max().double_value(&[]);
    eprintln!(
        "{}: max |logit diff| = {abs:.3e}, relative {rel:.3e} over {} tokens",
        model_dir.display(),
        ids.len()
    );
    assert!(rel <= tol, "relative logit diff {rel} > {tol}");
    rel
}

/// Greedy decoding through our KV-cache engine equals transformers' `generate` (its own
/// cache) token for token, from the same chat prompt ids; and every sampled log-prob and the
/// last distribution equal a full recomputation without cache.
fn greedy_and_cache_parity(model_dir: &Path) {
    let prompts = ["Rank: 1. Heat 2. Fargo", "Tell me about Casino (1995)."];
    let tmp = scratch("tiny-greedy");
    let out = tmp.join("greedy.json");
    let mut args = vec![
        "greedy",
        model_dir.to_str().unwrap(),
        "16",
        out.to_str().unwrap(),
    ];
    args.extend(prompts);
    hf_ref(&args);
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let policy = Policy::load(model_dir, Device::Cpu, Kind::Float).unwrap();
    let mut engine = Engine::new(&policy.model, &policy.tokenizer);
    engine.keep_distributions = true;
    let params = SamplingParams {
        max_new_tokens: 16,
        ignore_eos: true,
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
    for (&row, r) in rows.iter().zip(reference.as_array().unwrap()) {
        let theirs: Vec<i64> = serde_json::from_value(r["generated"].clone()).unwrap();
        let ours: Vec<i64> = engine.row(row).generated_ids().take(theirs.len()).collect();
        assert!(theirs.len() >= 8, "transformers stopped after {theirs:?}");
        assert_eq!(ours, theirs, "greedy tokens differ");
        let row = engine.row(row);
        let full = tch::no_grad(|| {
            policy
                .model
                .forward(&Tensor::from_slice(&row.ids).unsqueeze(0))
        })
        .squeeze_dim(0)
        .log_softmax(-1, Kind::Float);
        for t in 1..row.ids.len() {
            if row.mask[t] == 1 {
                let want = full.double_value(&[t as i64 - 1, row.ids[t]]);
                let got = row.logprobs[t] as f64;
                assert!(
                    (want - got).abs() < 1e-4,
                    "pos {t}: cached {got} vs full {want}"
                );
            }
        }
        // The last distribution over the whole vocabulary, relative to its largest
        // magnitude (random tiny models put far-tail log-probs in the hundreds).
        let last = Tensor::from_slice(row.last_distribution.as_ref().unwrap());
        let want = full.get(row.ids.len() as i64 - 2);
        let rel = max_abs_diff(&last, &want) / want.abs().max().double_value(&[]);
        eprintln!(
            "{}: cached vs full last distribution, relative {rel:.3e}",
            model_dir.display()
        );
        assert!(
            rel < 1e-5,
            "cached last distribution differs by {rel} (relative)"
        );
    }
}

#[test]
fn tiny_qwen3_logits_greedy_and_cache_match_transformers() {
    let dir = tiny_model("qwen3");
    relative_logits_parity(&dir, 1e-4);
    greedy_and_cache_parity(&dir);
}

#[test]
fn tiny_llama3_rope_scaling_matches_transformers() {
    let dir = tiny_model("llama3");
    relative_logits_parity(&dir, 1e-4);
    greedy_and_cache_parity(&dir);
    // The scaling really matters at these positions: without it the logits move far more
    // than the tolerance, so the check above would catch a missing or wrong scaling.
    let tmp = scratch("llama3-unscaled");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(dir.join(f), tmp.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 500000.0});
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    let ids = Tensor::from_slice(
        &Policy::load(&dir, Device::Cpu, Kind::Float)
            .unwrap()
            .tokenizer
            .encode(PROMPT, true)
            .unwrap(),
    )
    .unsqueeze(0);
    let logits = |d: &Path| {
        let m = lm::Model::load(d, Device::Cpu, Kind::Float).unwrap();
        tch::no_grad(|| m.forward(&ids))
    };
    let moved = max_abs_diff(&logits(&dir), &logits(&tmp));
    eprintln!("llama3 scaling moves the logits by {moved:.3e}");
    assert!(
        moved > 1e-2,
        "rope scaling changed the logits by only {moved}"
    );
}

#[test]
fn tiny_qwen2_5_greedy_matches_transformers() {
    greedy_and_cache_parity(&tiny_model("qwen2.5"));
}

/// A multi-turn tool conversation: system, user, assistant with `<think>` and a text
/// `<tool_call>`, the tool's answer, and the final assistant answer.
fn tool_conversation() -> Vec<Message> {
    vec![
        Message::system("You rank movies. Use tools."),
        Message::user("User 42. Candidates: 1. Heat (1995) 2. Fargo (1996)"),
        Message::assistant(
            "<think>\nI need the history.\n</think>\n\n<tool_call>\n{\"name\": \"user_history\", \"arguments\": {\"user_id\": 42}}\n</tool_call>",
        ),
        Message::tool("Toy Story (1995), 5 stars\nHeat (1995), 2 stars"),
        Message::assistant("<think>Fargo fits better.</think>\n<answer>2, 1</answer>"),
    ]
}

/// One rendering: template name, messages, add_generation_prompt, extra kwargs, tools.
type TemplateCase = (
    &'static str,
    Vec<Message>,
    bool,
    serde_json::Value,
    Option<serde_json::Value>,
);

/// Renders `cases` with transformers' `apply_chat_template` and with our `ChatTemplate`, and
/// asserts string equality.
fn template_parity(cases: &[TemplateCase]) {
    let tmp = scratch("templates");
    let json_cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|(name, msgs, gen, kwargs, tools)| {
            serde_json::json!({
                "template": repo_root().join(format!("testkit/templates/{name}.jinja")),
                "messages": msgs, "add_generation_prompt": gen, "kwargs": kwargs, "tools": tools,
            })
        })
        .collect();
    let cases_path = tmp.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&json_cases).unwrap()).unwrap();
    let out = tmp.join("rendered.json");
    let tok = tiny_model("qwen2");
    hf_ref(&[
        "render",
        tok.to_str().unwrap(),
        cases_path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let theirs: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for ((name, msgs, gen, kwargs, tools), theirs) in cases.iter().zip(theirs) {
        let chat = lm::chat::ChatTemplate::new(Some(template(name)), None, None).unwrap();
        let kwargs = kwargs.as_object().cloned().unwrap_or_default();
        let ours = chat
            .render_with(msgs, *gen, tools.as_ref(), &kwargs)
            .unwrap();
        assert_eq!(
            ours, theirs,
            "{name}, add_generation_prompt={gen}, {kwargs:?}"
        );
    }
}

#[test]
fn qwen2_5_and_qwen3_templates_render_like_transformers() {
    let conv = tool_conversation();
    let no_think = serde_json::json!({"enable_thinking": false});
    let none = serde_json::json!({});
    // Keys in sorted order at every level: our tojson writes serde_json's (sorted) order.
    let tools = serde_json::json!([{"function": {"description": "The user's rated items <recent first>.",
        "name": "user_history", "parameters": {"properties": {"user_id": {"type": "integer"}},
        "required": ["user_id"], "type": "object"}}, "type": "function"}]);
    let mut cases = Vec::new();
    for name in ["qwen2.5", "qwen3"] {
        cases.push((name, conv.clone(), false, none.clone(), None));
        // The conversation up to the tool answer, then the next assistant header.
        cases.push((name, conv[..4].to_vec(), true, none.clone(), None));
        cases.push((
            name,
            conv[1..4].to_vec(),
            true,
            none.clone(),
            Some(tools.clone()),
        ));
        cases.push((name, conv[1..].to_vec(), false, none.clone(), None));
    }
    cases.push(("qwen3", conv[..4].to_vec(), true, no_think.clone(), None));
    cases.push(("qwen3", conv[..2].to_vec(), true, no_think, None));
    template_parity(&cases);
}
