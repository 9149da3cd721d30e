"""The Python peer of one `recthinker rl` step with tools: TRL's GRPOTrainer with an
`environment_factory` whose tools are ours, served by ONE long-lived `recthinker tools serve`
(MCP over stdio, the official `mcp` client), on the same model, LoRA, episodes (the ones our
steps draw: scripts/bench/rust_order.py), prompts (our prompt builder, through `recthinker
synth`), B x G, turn and token limits, sampling temperature, thread count and reward (the
PROTOCOL.md reward: NDCG@10 of the parsed answer, -1 when invalid, tool efficiency and the
bad-call penalty).

How TRL is made to play our protocol:
- the chat template (peer_common.CHAT_TEMPLATE) renders our prompts exactly as the model's
  own template does, and tool results as we render them; tool calls are parsed with TRL's
  Qwen3 response template (<think>, <tool_call>{json}</tool_call>: the protocol's form);
- a turn ends where ours does: a logits processor makes `<|im_end|>` the next token after
  `</tool_call>` or `</answer>` (our engine stops on those strings and appends the same
  `<|im_end|>` as context; here it is generated and trained: one token per turn);
- per-turn and total limits: generation_kwargs max_new_tokens = our max_new_tokens,
  max_tool_calling_iterations = our max_turns, max_completion_length = our max_context;
- the environment's tools are built from the server's own tool list (names, schemas,
  descriptions), each forwarding the model's arguments as they are, with the episode, to
  the server; `reset(**row)` selects the row's episode (`train:all:INDEX`) and clears the
  call record; repeated calls get our "(Note: you already made this exact call.)".

Prints one JSON line: the second step (the first includes warm-up) and its rollout part,
what the rollouts did, and the process's peak resident memory."""
import argparse
import asyncio
import inspect
import json
import os
import subprocess
import sys
import threading
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import qwen3_template

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import CHAT_TEMPLATE, TOOL_RESPONSE, check_template, parse_answer, protocol_reward  # noqa: E402
from rust_order import batch_indices, self_check  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--bin", required=True, help="the recthinker binary (tools serve, synth, data episodes)")
ap.add_argument("--data", required=True, help="the prepared HDF5 file")
ap.add_argument("--seed", type=int, default=0, help="our rl seed: decides the episodes of each step")
ap.add_argument("--episodes", type=int, default=4, help="B")
ap.add_argument("--group", type=int, default=4, help="G")
ap.add_argument("--micro-batch", type=int, default=0,
                help="rows per forward/backward in training (gradient accumulation over the step's rows; "
                     "0: all rows at once). One generation per step either way.")
ap.add_argument("--steps", type=int, default=2)
ap.add_argument("--max-turns", type=int, default=3)
ap.add_argument("--new-tokens", type=int, default=160, help="per turn")
ap.add_argument("--max-context", type=int, default=3072)
ap.add_argument("--history-len", type=int, default=5)
ap.add_argument("--tool-max-chars", type=int, default=800)
ap.add_argument("--temperature", type=float, default=1.0)
ap.add_argument("--rank", type=int, default=16, help="LoRA rank (0: full fine-tuning)")
ap.add_argument("--alpha", type=float, default=32.0)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--gradient-checkpointing", action="store_true", help="GRPOConfig's default; off here as ours does not recompute")
ap.add_argument("--out-dir", default="/tmp/trl-grpo-agent-bench")
ap.add_argument("--dump", help="write every rollout (messages, calls, reward) here as JSON lines")
a = ap.parse_args()
torch.set_num_threads(a.threads)
self_check()
os.makedirs(a.out_dir, exist_ok=True)

# 1. The episodes of our steps, their prompts (our prompt builder, via the scripted teacher's
#    conversations) and targets.
listed = subprocess.run([a.bin, "data", "episodes", a.data, "--split", "train", "--subset", "all"],
                        check=True, capture_output=True, text=True).stdout
train = [json.loads(line) for line in listed.splitlines() if line.strip()]
steps_idx = [batch_indices(len(train), a.seed ^ 0x9E37, s, a.episodes) for s in range(a.steps)]
synth_out = os.path.join(a.out_dir, "prompts.jsonl")
with open(os.path.join(a.out_dir, "synth.toml"), "w") as f:
    f.write(f'data = "{a.data}"\nout = "{synth_out}"\nteacher = "scripted"\nsplit = "train"\n'
            f"limit_episodes = {max(max(s) for s in steps_idx) + 1}\nmin_ndcg = 0.0\nseed = 0\n"
            f"[agent]\nprompt_history_len = {a.history_len}\nmax_turns = {a.max_turns}\n"
            f"tool_max_chars = {a.tool_max_chars}\n")
done = subprocess.run([a.bin, "synth", "--config", os.path.join(a.out_dir, "synth.toml")],
                      capture_output=True, text=True, env={**os.environ, "RECTHINKER_THREADS": "1"})
if done.returncode != 0:
    raise SystemExit(f"recthinker synth failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
played = [json.loads(line) for line in open(synth_out) if line.strip()]
rows = []
for idx in steps_idx:
    for i in idx:
        ep, conv = train[i], played[i]
        if (conv["user"], conv["pos"]) != (ep["user"], len(ep["history"])):
            raise SystemExit(f"synth's conversation {i} is not train episode {i}")
        rows.append({"prompt": conv["messages"][:2], "episode": f"train:all:{i}",
                     "target_index": ep["candidates"].index(ep["target"]) + 1, "n_candidates": len(ep["candidates"])})


# 2. One long-lived MCP server of ours, one client session, driven from a background loop.
class Bridge:
    def __init__(self, command):
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.ready, self.stop = threading.Event(), None
        params = StdioServerParameters(command=command[0], args=command[1:])

        async def hold():
            self.stop = asyncio.Event()
            async with Client(params, read_timeout_seconds=300) as client:
                self.client = client
                self.tools = (await client.list_tools()).tools
                self.ready.set()
                await self.stop.wait()

        self.task = asyncio.run_coroutine_threadsafe(hold(), self.loop)
        while not self.ready.wait(0.1):
            if self.task.done():
                self.task.result()  # raises what went wrong
        self.calls = 0

    def call(self, name, arguments):
        self.calls += 1
        r = asyncio.run_coroutine_threadsafe(self.client.call_tool(name, arguments), self.loop).result()
        return "\n".join(getattr(c, "text", "") for c in r.content), bool(r.is_error)

    def close(self):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.task.result(timeout=30)


bridge = Bridge([a.bin, "tools", "serve", "--data", a.data, "--max-chars", str(a.tool_max_chars)])


class RecEnv:
    """One rollout's view of the tool server: its episode and its calls so far."""

    def reset(self, episode, **_):
        self.episode, self.calls = episode, []  # calls: (name, arguments, ok)

    def _call(self, name, arguments):
        duplicate = any(ok and n == name and args == arguments for n, args, ok in self.calls)
        text, error = bridge.call(name, {**arguments, "episode": self.episode})
        if duplicate:
            text += "\n(Note: you already made this exact call.)"
        self.calls.append((name, arguments, not error and not duplicate))
        return f"{TOOL_RESPONSE[0]}\n{text}\n{TOOL_RESPONSE[1]}"


JSON_TYPES = {"integer": int, "number": float, "boolean": bool, "string": str}


def add_tool(tool):
    """RecEnv.<name>(**arguments): forwards whatever the model passed (the server checks it,
    as our registry does in process); its signature and docstring, which TRL reads, come
    from the server's schema."""
    props = {k: v for k, v in (tool.input_schema.get("properties") or {}).items() if k != "episode"}

    def method(self, **arguments):
        return self._call(tool.name, arguments)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=JSON_TYPES.get(v.get("type"), str) | None) for k, v in props.items()]
    method.__name__ = method.__qualname__ = tool.name
    method.__signature__ = inspect.Signature(params, return_annotation=str)
    method.__annotations__ = {p.name: p.annotation for p in params[1:]} | {"return": str}
    args = "".join(f"\n        {k}: {v.get('description') or v.get('type', 'value')}" for k, v in props.items())
    method.__doc__ = (tool.description or tool.name) + (f"\n\n    Args:{args}" if props else "") + \
        "\n\n    Returns:\n        The observation."
    setattr(RecEnv, tool.name, method)


for t in bridge.tools:
    if t.name != "select_episode":
        add_tool(t)


def protocol_reward_fn(completions, environments, target_index, n_candidates, **_):
    out = []
    for comp, env, target, n in zip(completions, environments, target_index, n_candidates):
        last = comp[-1] if comp else {}
        answer = last.get("content", "") if last.get("role") == "assistant" and not last.get("tool_calls") else ""
        calls = sum(1 for m in comp if m.get("role") == "tool")
        ok = sum(1 for _, _, good in env.calls if good)
        out.append(protocol_reward(parse_answer(answer or "", n), target, calls, calls - ok))
        if a.dump:
            with open(a.dump, "a") as f:
                f.write(json.dumps({"episode": env.episode, "target_index": target, "reward": out[-1],
                                    "calls": env.calls, "completion": comp}, default=str) + "\n")
    return out


# 3. The model, the template and the end of a turn.
tok = AutoTokenizer.from_pretrained(a.model)
check_template(tok, rows[0]["prompt"])
tok.chat_template = CHAT_TEMPLATE
tok.response_template = qwen3_template


class EndTurn(LogitsProcessor):
    """`<|im_end|>` right after `</tool_call>` or `</answer>`: the turn ends where our engine's
    stop strings end it."""

    def __init__(self):
        self.stops = ("</tool_call>", "</answer>")

    def __call__(self, input_ids, scores):
        for i, tail in enumerate(tok.batch_decode(input_ids[:, -8:])):
            if tail.endswith(self.stops):
                scores[i, :] = float("-inf")
                scores[i, tok.eos_token_id] = 0.0
        return scores


model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
generate, generate_calls = model.generate, [0]


def generate_ending_turns(*args, **kw):
    generate_calls[0] += 1
    kw["logits_processor"] = LogitsProcessorList([*(kw.get("logits_processor") or []), EndTurn()])
    return generate(*args, **kw)


model.generate = generate_ending_turns
rows_per_step = a.episodes * a.group
micro = a.micro_batch or rows_per_step
if rows_per_step % micro:
    raise SystemExit(f"--micro-batch {micro} does not divide the {rows_per_step} rows of a step")
accumulate = rows_per_step // micro  # one optimizer step = one generation of all rows, then `accumulate` micro-batches
cfg = GRPOConfig(
    output_dir=a.out_dir, per_device_train_batch_size=micro, num_generations=a.group,
    max_completion_length=a.max_context, max_steps=a.steps, learning_rate=a.lr, use_cpu=True, report_to=[],
    logging_steps=1, save_strategy="no", beta=0.0, num_iterations=1, steps_per_generation=accumulate,
    temperature=a.temperature, top_p=1.0, gradient_accumulation_steps=accumulate, bf16=False, seed=a.seed,
    shuffle_dataset=False, max_tool_calling_iterations=a.max_turns, generation_kwargs={"max_new_tokens": a.new_tokens},
    epsilon=0.2, epsilon_high=0.28, gradient_checkpointing=a.gradient_checkpointing, disable_tqdm=True,
)
peft = None if a.rank == 0 else LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
                                           task_type="CAUSAL_LM", target_modules=a.targets.split(","))


class Timer(TrainerCallback):
    def __init__(self):
        self.steps, self.rollouts = [], []

    def on_step_begin(self, args, state, control, **kw):
        self.t, self.rollout = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t)
        self.rollouts.append(self.rollout)


timer = Timer()
trainer = GRPOTrainer(model=model, reward_funcs=protocol_reward_fn, args=cfg, train_dataset=Dataset.from_list(rows),
                      processing_class=tok, callbacks=[timer], peft_config=peft, environment_factory=RecEnv)
_generate = trainer._generate


def timed_generate(prompts):  # generation and the tool loop: the rollout
    t = time.perf_counter()
    out = _generate(prompts)
    timer.rollout += time.perf_counter() - t
    return out


trainer._generate = timed_generate
trainer.train()
bridge.close()
if generate_calls[0] == 0:
    raise SystemExit("TRL did not call the wrapped generate: the turn-ending logits processor never ran")


def vm_hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


logs = [h for h in trainer.state.log_history if "reward" in h]
last = logs[-1] if logs else {}
print(json.dumps({
    "impl": "trl", "step_seconds": timer.steps[-1], "rollout_seconds": timer.rollouts[-1],
    "first_step_seconds": timer.steps[0], "episodes": steps_idx, "rows": rows_per_step,
    "reward_mean": last.get("reward"), "completion_mean_length": last.get("completions/mean_length"),
    "generated_tokens": round(last.get("completions/mean_length", 0) * rows_per_step),
    "tool_calls_per_row": last.get("tools/call_frequency"), "tool_failures": last.get("tools/failure_frequency"),
    "server_calls": bridge.calls, "generate_calls": generate_calls[0],
    "peak_rss_kib": vm_hwm_kib(), "threads": torch.get_num_threads(),
}))
