"""Reference outputs from HF transformers, for the Rust tests (nobody here wrote these).

  tiny FAMILY OUT TOKENIZER_DIR      random tiny qwen2|llama model (seeded), saved as HF dir
  logits MODEL PROMPT OUT            logits [T, V] f32 + input_ids of a raw prompt
  greedy MODEL N OUT PROMPT...       greedy token ids of `generate` for chat prompts
  chat MODEL MESSAGES_JSON OUT       apply_chat_template text (add_generation_prompt=True)
"""
import json
import shutil
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(1)


def tiny(family, out, tok_dir):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=49152, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                  # large weights give peaked next-token distributions, so greedy choices
                  # are not near-ties that float noise could flip
                  initializer_range=0.5)
    if family == "qwen2":
        cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=False,
                          rope_theta=1000000.0, **common)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True,
                          rope_theta=500000.0, **common)
        model = LlamaForCausalLM(cfg)
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


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return tok, model


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


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "greedy":
        greedy(args[0], args[1], args[2], args[3:])
    else:
        {"tiny": tiny, "logits": logits, "chat": chat}[cmd](*args)
