"""What the Python peers of the benchmarks share: the chat template that lets TRL render our
protocol on a ChatML model (SmolLM2), our tokenization of a conversation (to check that TRL
trains on the same tokens), and our answer parsing and reward (PROTOCOL.md)."""

import math
import re

# SmolLM2's ChatML template, extended so that TRL can use it:
# - assistant turns sit inside {% generation %} markers (TRL's assistant_only_loss). As in
#   our SFT mask, the `<|im_end|>` of an assistant turn that a tool message follows is
#   context, the one closing the last turn is trained, and nothing follows it;
# - an assistant turn may carry `tool_calls` (TRL's tool loop renders them; the protocol's
#   text form is <tool_call>{"name": ..., "arguments": {...}}</tool_call>);
# - a tool message is shown as stored: our tool messages already hold
#   <tool_response>...</tool_response>.
# For a system + user prompt it renders exactly what SmolLM2's own template renders (the
# peers check this for the model they load).
CHAT_TEMPLATE = r"""{%- for message in messages -%}
{%- if loop.first and message['role'] != 'system' -%}
{{- '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' -}}
{%- endif -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}
{{- message['content'] or '' -}}
{%- for call in message.get('tool_calls') or [] -%}
{%- set f = call['function'] if 'function' in call else call -%}
{{- ('\n' if loop.first and message['content'] else '') + '<tool_call>' + ({'name': f['name'], 'arguments': f['arguments']} | tojson) + '</tool_call>' -}}
{%- endfor -%}
{%- if loop.last -%}{{- '<|im_end|>' -}}{%- endif -%}
{%- endgeneration -%}
{%- if not loop.last -%}{{- '<|im_end|>\n' -}}{%- endif -%}
{%- else -%}
{{- message['content'] + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""

TOOL_RESPONSE = ("<tool_response>", "</tool_response>")


def check_template(tok, messages):
    """Fails unless CHAT_TEMPLATE renders `messages` (a system + user prompt) as the model's
    own template does: the peers are only comparable on a ChatML model."""
    own = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=CHAT_TEMPLATE)
    if own != ours:
        raise SystemExit(
            "the model's chat template is not SmolLM2's ChatML: the benchmark's template would render "
            "different prompts (scripts/bench/peer_common.py CHAT_TEMPLATE)"
        )


_MARKER = "\ue000recthinker-turn\ue001"


def our_tokens(tok, messages, max_len):
    """trainer::sequence::tokenize_conversation on a ChatML model, truncated to max_len: the
    prompt (up to the first assistant turn, with the assistant header), each assistant turn
    encoded alone (mask 1), after it either the template's text up to the next assistant
    header with the tool message (mask 0) or, for the last turn, the EOS token (mask 1)."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = enc(tok.apply_chat_template(messages[:first], tokenize=False, add_generation_prompt=True))
    mask = [0] * len(ids)
    k = first
    while k < len(messages):
        turn = enc(messages[k]["content"])
        ids += turn
        mask += [1] * len(turn)
        if k + 1 < len(messages):
            shown = [dict(m) for m in messages[: k + 1]]
            shown[-1]["content"] = _MARKER
            after = tok.apply_chat_template(shown + [messages[k + 1]], tokenize=False, add_generation_prompt=True)
            suffix = enc(after[after.rindex(_MARKER) + len(_MARKER):])
            ids += suffix
            mask += [0] * len(suffix)
            k += 2
        else:
            ids.append(tok.eos_token_id)
            mask.append(1)
            k += 1
    return ids[:max_len], mask[:max_len]


def parse_answer(text, n):
    """rollout::protocol::parse_answer: the full ranking (1-based), or None when invalid."""
    start = text.rfind("<answer>")
    if start < 0:
        return None
    body = text[start + len("<answer>"):]
    end = body.find("</answer>")
    if end < 0:
        return None
    order, seen = [], set()
    for raw in body[:end].replace(",", " ").replace(">", " ").split():
        t = raw.strip().strip("[].()")
        if not t:
            continue
        if not re.fullmatch(r"[+-]?[0-9]+", t):
            return None
        i = int(t)
        if i < 1 or i > n or i in seen:
            return None
        seen.add(i)
        order.append(i)
    if not order:
        return None
    return order + [i for i in range(1, n + 1) if i not in seen]


def protocol_reward(ranking, target_index, calls, bad_calls, lam=0.2, c=4.0, mu=0.05, k=10):
    """reward::composite::reward (PROTOCOL.md): r_fmt + r_acc * (1 - lambda + lambda * r_eff)
    - mu * bad_calls, r_acc = NDCG@k of the target's rank (0 when invalid), r_fmt = -1 when
    invalid, r_eff = cos(m*pi/(2m+c)) for m >= 1 calls (1 for none)."""
    rank = ranking.index(target_index) + 1 if ranking and target_index in ranking else None
    acc = 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0
    fmt = 0.0 if rank is not None else -1.0
    eff = math.cos(calls * math.pi / (2 * calls + c)) if calls >= 1 else 1.0
    return fmt + acc * (1.0 - lam + lam * eff) - mu * bad_calls
