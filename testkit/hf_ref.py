"""Reference outputs from HF transformers, for the Rust tests (nobody here wrote these).

  tiny FAMILY OUT TOKENIZER_DIR      random tiny model (seeded), saved as HF dir; FAMILY is
                                     qwen2 | qwen2.5 (qwen2 + Qwen2.5's template) | qwen3 |
                                     llama | llama3 (llama + llama3 rope scaling)
  logits MODEL PROMPT OUT            logits [T, V] f32 + input_ids of a raw prompt (MODEL may be
                                     a PEFT adapter directory: its base wrapped by peft.PeftModel)
  lowrank BASE OUT RANK              BASE plus a seeded random rank-RANK update of every
                                     q/k/v/o/gate/up/down projection (what a LoRA run merges)
  greedy MODEL N OUT PROMPT...       greedy token ids of `generate` for chat prompts
  chat MODEL MESSAGES_JSON OUT       apply_chat_template text (add_generation_prompt=True)
  render TOKENIZER_DIR CASES_JSON OUT  apply_chat_template text of each case
                                     {template, messages, add_generation_prompt, tools, kwargs}
                                     (template: a file path), as a JSON list of strings
"""
import os
import json
import shutil
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(1)


TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def tiny(family, out, tok_dir):
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    torch.manual_seed(0)
    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                  # large weights give peaked next-token distributions, so greedy choices
                  # are not near-ties that float noise could flip
                  initializer_range=0.5)
    if family in ("qwen2", "qwen2.5"):
        cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=1000000.0, **common)
        model = Qwen2ForCausalLM(cfg)
    elif family == "qwen3":
        # head_dim 24 != hidden/heads = 16: q/k/v/o and q_norm/k_norm shapes depend on it
        cfg = Qwen3Config(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True,
                          rope_theta=1000000.0, **common)
        model = Qwen3ForCausalLM(cfg)
    elif family == "llama3":
        # original_max_position_embeddings 64 puts the 8 frequencies of head_dim 16 in all three
        # llama3 bands (wavelength < 16 kept, 16..64 smoothed, > 64 divided by 8), so the
        # scaling changes the logits at the tests' 20-30 positions
        cfg = LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False,
                          rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                           "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64},
                          **common)
        model = LlamaForCausalLM(cfg)
    elif family == "llama":
        cfg = LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True,
                          rope_theta=500000.0, **common)
        model = LlamaForCausalLM(cfg)
    else:
        sys.exit(f"unknown tiny family {family}")
    with torch.no_grad():  # make biases and norms non-trivial so they are really tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        try:
            shutil.copy(f"{tok_dir}/{f}", f"{out}/{f}")
        except FileNotFoundError:
            pass
    if family in ("qwen2.5", "qwen3"):  # the real template, over the tokenizer's own
        shutil.copy(f"{TEMPLATES}/{family}.jinja", f"{out}/chat_template.jinja")


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = os.path.join(model_dir, "adapter_config.json")
    if os.path.exists(adapter) and not os.path.exists(os.path.join(model_dir, "config.json")):
        from peft import PeftModel

        base = json.load(open(adapter))["base_model_name_or_path"]
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, model_dir)
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return tok, model


def lowrank(base, out, rank):
    from safetensors.torch import load_file

    torch.manual_seed(1)
    shutil.copytree(base, out)
    weights = load_file(f"{base}/model.safetensors")
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name, w in weights.items():
        if any(name.endswith(f".{p}.weight") for p in projections):
            b = torch.randn(w.shape[0], int(rank)) * 0.05
            a = torch.randn(int(rank), w.shape[1]) * 0.05
            weights[name] = (w.float() + b @ a).to(w.dtype).contiguous()
    save_file(weights, f"{out}/model.safetensors", metadata={"format": "pt"})


def logits(model_dir, prompt, out):
    tok, model = load(model_dir)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lg = model(ids).logits[0].float().contiguous()
    save_file({"logits": lg, "input_ids": ids[0].contiguous()}, out)


def chat_ids(tok, text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def greedy(model_dir, n, out, prompts):
    tok, model = load(model_dir)
    result = []
    for p in prompts:
        ids = torch.tensor([chat_ids(tok, p)])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=int(n), do_sample=False)
        result.append({"prompt_ids": ids[0].tolist(), "generated": gen[0, ids.shape[1]:].tolist()})
    json.dump(result, open(out, "w"))


def chat(model_dir, messages_json, out):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = json.load(open(messages_json))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    open(out, "w").write(text)


def render(tok_dir, cases_json, out):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    result = []
    for case in json.load(open(cases_json)):
        text = tok.apply_chat_template(
            case["messages"], chat_template=open(case["template"]).read(),
            tools=case.get("tools"), add_generation_prompt=case["add_generation_prompt"],
            tokenize=False, **case.get("kwargs", {}))
        result.append(text)
    json.dump(result, open(out, "w"))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "greedy":
        greedy(args[0], args[1], args[2], args[3:])
    else:
        {"tiny": tiny, "logits": logits, "chat": chat, "render": render,
         "lowrank": lowrank}[cmd](*args)
