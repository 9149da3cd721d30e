"""Drives an OpenAI-compatible server with the official Python client (`openai`) and checks
what it answers; prints a JSON report of what it measured.

Used by trainer/tests/serve.rs against `recthinker serve`, and handy by hand:

    target/release/recthinker serve --model DIR --port 8000 &
    .venv/bin/python scripts/openai_client_check.py --base-url http://127.0.0.1:8000/v1 \
        --model NAME --model-dir DIR --check api

Checks (--check, repeatable):
  chat         a real model: plain = streamed, n = 2, a tool round trip (--max-tokens each).
  api          models list/retrieve, plain and streamed chat (the stream's deltas equal the
               plain reply), n > 1, seeds, stop sequences, max_tokens -> "length", a tool
               round trip (assistant tool_calls then a tool message), usage counts equal to
               transformers' tokenizer on the same chat template, 4xx bodies naming the field.
  load         --clients concurrent clients x --requests each; none lost; p50/p95 latency.
  queue        a burst at a server with a small queue: 429 with Retry-After, the rest complete.
  sigterm      --pid: SIGTERM while a stream is in flight; the stream still completes and
               the server then refuses connections.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI, AsyncOpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
HELLO = [{"role": "user", "content": "Say hello."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def sorted_json(v):
    """The object with sorted keys: the server's template renders JSON with sorted keys."""
    return json.loads(json.dumps(v, sort_keys=True))


def raw(url, method="GET", body=None):
    """(status, headers, parsed JSON body) without the client (malformed requests)."""
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def chat(client, model, **kw):
    kw.setdefault("messages", HELLO)
    return client.chat.completions.create(model=model, **kw)


def stream(client, model, **kw):
    """(content per choice, finish_reason per choice, tool_calls per choice, usage)."""
    kw.setdefault("messages", HELLO)
    n = kw.get("n", 1)
    text, finish, calls, usage = [""] * n, [None] * n, [[] for _ in range(n)], None
    for chunk in client.chat.completions.create(model=model, stream=True, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text[c.index] += c.delta.content
            for tc in c.delta.tool_calls or []:
                calls[c.index].append(tc)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return text, finish, calls, usage


def check_api(client, a, report):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    # Counted by `tokenizers` on tokenizer.json itself: transformers may pick a tokenizer class
    # from config.json whose pre-tokenizer differs from the file's (the tiny Qwen2 test models
    # carry SmolLM2's tokenizer.json; Qwen2Tokenizer splits "\n\n" its own way).
    counter = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))

    def prompt_len(messages, tools=None):
        text = tok.apply_chat_template(
            sorted_json(messages),
            tools=sorted_json(tools) if tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )
        return len(counter.encode(text, add_special_tokens=False).ids)

    m = a.model
    # Models.
    listed = [x.id for x in client.models.list().data]
    check(listed == [m], f"models.list: {listed}")
    check(client.models.retrieve(m).id == m, "models.retrieve")
    try:
        client.models.retrieve("no-such-model")
        check(False, "an unknown model was retrieved")
    except openai.NotFoundError:
        pass

    # Plain chat, and the same request streamed.
    r = chat(client, m, temperature=0, max_tokens=24)
    c = r.choices[0]
    check(c.message.role == "assistant" and isinstance(c.message.content, str), f"{r}")
    check(c.finish_reason in ("stop", "length"), c.finish_reason)
    check(r.usage.prompt_tokens == prompt_len(HELLO), f"prompt_tokens {r.usage} vs transformers {prompt_len(HELLO)}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, f"{r.usage}")
    text, finish, _, usage = stream(client, m, temperature=0, max_tokens=24, stream_options={"include_usage": True})
    check(text[0] == c.message.content, f"stream {text[0]!r} != plain {c.message.content!r}")
    check(finish[0] == c.finish_reason and usage == r.usage, f"{finish} {usage} vs {c.finish_reason} {r.usage}")
    report["plain"] = {"content": c.message.content, "usage": r.usage.model_dump()}

    # max_tokens ends with "length" after exactly that many tokens.
    r = chat(client, m, temperature=0.8, max_tokens=7, extra_body={"ignore_eos": True})
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7, f"{r}")

    # Seeds: the same seed gives the same text, another seed another.
    same = [chat(client, m, temperature=1.0, seed=5, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content for _ in range(2)]
    other = chat(client, m, temperature=1.0, seed=6, max_tokens=16, extra_body={"ignore_eos": True}).choices[0].message.content
    check(same[0] == same[1], f"seed 5 twice: {same}")
    check(other != same[0], f"seeds 5 and 6 gave the same text {other!r}")

    # n > 1: choice i samples with seed + i.
    r = chat(client, m, n=3, temperature=1.0, seed=11, max_tokens=12, extra_body={"ignore_eos": True})
    check([ch.index for ch in r.choices] == [0, 1, 2], f"{r}")
    texts = [ch.message.content for ch in r.choices]
    check(len(set(texts)) > 1, f"n=3 gave identical choices {texts}")
    check(r.usage.completion_tokens == 36, f"{r.usage}")
    one = chat(client, m, temperature=1.0, seed=12, max_tokens=12, extra_body={"ignore_eos": True})
    check(one.choices[0].message.content == texts[1], f"seed 12 {one.choices[0].message.content!r} != choice 1 {texts[1]!r}")
    st, sf, _, su = stream(client, m, n=3, temperature=1.0, seed=11, max_tokens=12, extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
    check(st == texts and sf == ["length"] * 3 and su.completion_tokens == 36, f"stream n=3 {st} {sf} {su}")

    # Stop sequences: cut before the stop, streamed or not.
    ref = chat(client, m, temperature=0, max_tokens=40, extra_body={"ignore_eos": True}).choices[0].message.content
    words = [w for w in ref.split() if len(w) >= 3]
    check(len(words) >= 4, f"reference text too short for a stop test: {ref!r}")
    stop = words[3]
    want = ref[: ref.find(stop)]
    r = chat(client, m, temperature=0, max_tokens=40, stop=[stop, "\u0000never"], extra_body={"ignore_eos": True})
    check(r.choices[0].message.content == want and r.choices[0].finish_reason == "stop", f"stop {stop!r}: {r.choices[0]} want {want!r}")
    text, finish, _, _ = stream(client, m, temperature=0, max_tokens=40, stop=stop, extra_body={"ignore_eos": True})
    check(text[0] == want and finish[0] == "stop", f"streamed stop {stop!r}: {text[0]!r} want {want!r}")
    report["stop"] = {"stop": stop, "content": want}

    # A tool round trip: the assistant's tool call and the tool's result go back in.
    convo = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = chat(client, m, messages=convo, tools=[WEATHER], temperature=0, max_tokens=16)
    c = r.choices[0]
    check(c.finish_reason in ("stop", "length", "tool_calls"), f"{c}")
    for tc in c.message.tool_calls or []:
        json.loads(tc.function.arguments)
    hf_convo = [dict(x) for x in convo]
    hf_convo[2] = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    want_len = prompt_len(hf_convo, [WEATHER])
    check(r.usage.prompt_tokens == want_len, f"tool round trip prompt_tokens {r.usage.prompt_tokens} vs transformers {want_len}")
    r2 = chat(client, m, messages=HELLO, tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=8)
    check(r2.usage.prompt_tokens == prompt_len(HELLO, [WEATHER]), f"tools prompt_tokens {r2.usage}")
    r3 = chat(client, m, messages=HELLO, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=8)
    check(r3.usage.prompt_tokens == prompt_len(HELLO), f"tool_choice none {r3.usage}")
    text, finish, _, usage = stream(client, m, messages=convo, tools=[WEATHER], temperature=0, max_tokens=16, stream_options={"include_usage": True})
    check(finish[0] == c.finish_reason and usage.prompt_tokens == want_len, f"streamed tool round trip {finish} {usage}")
    report["tools"] = {"prompt_tokens": want_len, "finish_reason": c.finish_reason}

    # Malformed requests: 4xx naming the field, and the server keeps serving.
    bad = [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 7}, "temperature"),
        ({"n": 0}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"stop": ["ok", 1]}, "stop[1]"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"max_tokens": 100000}, "max_tokens"),
        ({"logprobs": True}, "logprobs"),
    ]
    for extra, param in bad:
        kw = {"messages": HELLO, **extra}
        try:
            client.chat.completions.create(model=m, **kw)
            check(False, f"{extra} was accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.param == param and e.type == "invalid_request_error", f"{extra}: {e.status_code} {e.body}")
    try:
        chat(client, "no-such-model")
        check(False, "an unknown model was served")
    except openai.NotFoundError as e:
        check(e.param == "model", f"{e.body}")
    url = a.base_url.rstrip("/") + "/chat/completions"
    status, _, body = raw(url, "POST", b"{not json")
    check(status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None, f"{status} {body}")
    status, _, body = raw(url, "POST", b" " * (5 << 20))
    check(status == 413, f"oversize: {status} {body}")
    status, _, body = raw(url, "GET")
    check(status == 405, f"GET: {status} {body}")
    status, _, body = raw(a.base_url.rstrip("/") + "/nope", "POST", b"{}")
    check(status == 404, f"unknown path: {status} {body}")
    r = chat(client, m, temperature=0, max_tokens=24)
    check(r.choices[0].message.content == report["plain"]["content"], "served differently after the malformed requests")
    report["malformed"] = len(bad) + 5


def check_chat(client, a, report):
    """A real model (SmolLM2): plain and streamed chat agree, n = 2, and a tool round trip
    through a template without tool support (tools go into the system prompt, the call and
    its result into the text) is accepted and longer than the same chat without tools."""
    m = a.model
    q = [{"role": "user", "content": "What is the capital of France?"}]
    r = chat(client, m, messages=q, temperature=0, max_tokens=a.max_tokens)
    c = r.choices[0]
    check(c.message.content and c.finish_reason in ("stop", "length"), f"{r}")
    text, finish, _, usage = stream(client, m, messages=q, temperature=0, max_tokens=a.max_tokens, stream_options={"include_usage": True})
    check(text[0] == c.message.content and finish[0] == c.finish_reason and usage == r.usage, f"{text} {finish} {usage} vs {r}")
    r2 = chat(client, m, messages=q, n=2, temperature=1.0, seed=1, max_tokens=a.max_tokens)
    check(len(r2.choices) == 2 and r2.usage.prompt_tokens == r.usage.prompt_tokens, f"{r2}")
    convo = q + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    rt = chat(client, m, messages=convo, tools=[WEATHER], temperature=0, max_tokens=a.max_tokens)
    check(rt.choices[0].finish_reason in ("stop", "length", "tool_calls"), f"{rt}")
    check(rt.usage.prompt_tokens > r.usage.prompt_tokens + 40, f"{rt.usage} vs {r.usage}")
    report["chat"] = {"content": c.message.content, "usage": r.usage.model_dump(),
                      "tool_round_trip": {"prompt_tokens": rt.usage.prompt_tokens, "finish_reason": rt.choices[0].finish_reason,
                                          "content": rt.choices[0].message.content}}


async def check_load(a, report):
    client = AsyncOpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=300)
    lat = []

    async def one_client(k):
        out = []
        for j in range(a.requests):
            t = time.perf_counter()
            r = await client.chat.completions.create(
                model=a.model, messages=[{"role": "user", "content": f"client {k} request {j}"}],
                temperature=1.0, seed=k * 100 + j, max_tokens=a.max_tokens, extra_body={"ignore_eos": True})
            lat.append(time.perf_counter() - t)
            out.append(r.usage.completion_tokens)
        return out

    t = time.perf_counter()
    tokens = await asyncio.gather(*(one_client(k) for k in range(a.clients)))
    wall = time.perf_counter() - t
    flat = [x for xs in tokens for x in xs]
    check(len(flat) == a.clients * a.requests, f"{len(flat)} replies")
    check(all(x == a.max_tokens for x in flat), f"token counts {flat}")
    lat.sort()
    report["load"] = {
        "clients": a.clients, "requests_each": a.requests, "completed": len(flat),
        "max_tokens": a.max_tokens, "wall_s": round(wall, 3),
        "p50_s": round(statistics.median(lat), 3), "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
        "tokens_per_s": round(sum(flat) / wall, 1),
    }


async def check_queue(a, report):
    client = AsyncOpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=300)

    async def one(k):
        try:
            r = await client.chat.completions.create(
                model=a.model, messages=HELLO, temperature=1.0, seed=k, max_tokens=a.max_tokens,
                extra_body={"ignore_eos": True})
            return ("ok", r.usage.completion_tokens)
        except openai.RateLimitError as e:
            return ("429", e.response.headers.get("retry-after"), e.code)

    results = await asyncio.gather(*(one(k) for k in range(a.clients)))
    ok = [r for r in results if r[0] == "ok"]
    limited = [r for r in results if r[0] == "429"]
    check(len(ok) + len(limited) == a.clients, f"{results}")
    check(limited, f"no request was refused: {results}")
    check(all(r[1] is not None and int(r[1]) >= 1 and r[2] == "rate_limit_exceeded" for r in limited), f"{limited}")
    check(all(r[1] == a.max_tokens for r in ok), f"{ok}")
    after = await client.chat.completions.create(model=a.model, messages=HELLO, max_tokens=4)
    check(after.choices[0].finish_reason in ("stop", "length"), "served after the burst")
    report["queue"] = {"sent": a.clients, "completed": len(ok), "refused_429": len(limited), "retry_after": limited[0][1]}


def check_sigterm(client, a, report):
    """A stream in flight and a request queued behind it when SIGTERM arrives: both finish."""
    import threading

    queued = {}

    def second():
        r = chat(client, a.model, temperature=1.0, seed=4, max_tokens=40, extra_body={"ignore_eos": True})
        queued["tokens"] = r.usage.completion_tokens

    t = time.perf_counter()
    chunks, text, finish, usage = 0, "", None, None
    worker = threading.Thread(target=second)
    for chunk in client.chat.completions.create(
            model=a.model, messages=HELLO, stream=True, temperature=1.0, seed=3, max_tokens=a.max_tokens,
            extra_body={"ignore_eos": True}, stream_options={"include_usage": True}):
        chunks += 1
        if chunks == 2:
            worker.start()
            time.sleep(0.3)
            os.kill(a.pid, signal.SIGTERM)
            signalled = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    worker.join(timeout=120)
    check(finish == "length" and usage is not None and usage.completion_tokens == a.max_tokens, f"{finish} {usage}")
    check(queued.get("tokens") == 40, f"the queued request: {queued}")
    refused = False
    try:
        OpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=5).models.list()
    except openai.APIConnectionError:
        refused = True
    check(refused, "a new connection was accepted after SIGTERM")
    report["sigterm"] = {"completion_tokens": usage.completion_tokens, "chunks": chunks,
                         "queued_completion_tokens": queued["tokens"],
                         "finished_after_signal_s": round(time.perf_counter() - signalled, 3),
                         "total_s": round(time.perf_counter() - t, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True, help="the served model id")
    p.add_argument("--model-dir", help="the model directory (api: transformers' tokenizer)")
    p.add_argument("--check", action="append", required=True, choices=["api", "chat", "load", "queue", "sigterm"])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--pid", type=int, help="sigterm: the server's process id")
    a = p.parse_args()
    client = OpenAI(base_url=a.base_url, api_key="none", max_retries=0, timeout=300)
    report = {"openai": openai.__version__}
    for c in a.check:
        t = time.perf_counter()
        if c == "api":
            check_api(client, a, report)
        elif c == "chat":
            check_chat(client, a, report)
        elif c == "load":
            asyncio.run(check_load(a, report))
        elif c == "queue":
            asyncio.run(check_queue(a, report))
        elif c == "sigterm":
            check_sigterm(client, a, report)
        report.setdefault("seconds", {})[c] = round(time.perf_counter() - t, 3)
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
