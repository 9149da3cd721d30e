//! `recthinker synth` with `teacher = "openai"` against a loopback HTTP server that speaks
//! the chat-completions wire format: native and text tool calls, the rewritten transcript,
//! the key header, retries after 503, no retry after 401, time-outs, a missing key variable.

use testkit as support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::{prepare_ml100k, scratch, Scratch};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    authorization: Option<String>,
    path: String,
    body: Value,
}

/// (status, body, delay before answering) for the n-th request.
type Reply = (u16, String, u64);

struct Server {
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let path = first.split_whitespace().nth(1)?.to_string();
    let (mut len, mut authorization) = (0usize, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => len = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        authorization,
        path,
        body: serde_json::from_slice(&body).ok()?,
    })
}

/// Serves on 127.0.0.1 (each connection on its own thread, closed after one reply).
fn serve(respond: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let count = Arc::new(AtomicUsize::new(0));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (respond, count, log) = (respond.clone(), count.clone(), log.clone());
            std::thread::spawn(move || {
                let Some(req) = read_request(&mut stream) else {
                    return;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                log.lock().unwrap().push(req.clone());
                let (status, body, delay) = respond(n, &req);
                std::thread::sleep(Duration::from_millis(delay));
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 0\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            });
        }
    });
    Server {
        base_url: format!("http://{addr}/v1"),
        seen,
    }
}

/// Tool results the conversation already holds (native tool messages or text-protocol ones).
fn results_so_far(req: &Seen) -> usize {
    req.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["role"] == "tool"
                || (m["role"] == "user"
                    && m["content"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("<tool_response>")))
        })
        .count()
}

const ANSWER: &str = "Candidate 3 fits best.\n<answer>3, 1, 2, 4, 5, 6, 7, 8, 9, 10</answer>";

/// A small agent: one similar_users call (native when tools are offered), then an answer.
fn agent_reply(req: &Seen) -> String {
    let message = if results_so_far(req) > 0 {
        json!({"role": "assistant", "content": ANSWER})
    } else if req.body.get("tools").is_some() {
        json!({"role": "assistant", "content": "I should ask similar users.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "similar_users", "arguments": "{\"k\": 5, \"only_candidates\": true}"}}]})
    } else {
        json!({"role": "assistant", "content": "<think>Ask similar users.</think>\n<tool_call>{\"name\": \"similar_users\", \"arguments\": {\"only_candidates\": true}}</tool_call>"})
    };
    json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).to_string()
}

fn data() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let out = scratch("openai-teacher").keep().join("ml.h5");
        prepare_ml100k(env!("CARGO_BIN_EXE_recthinker"), &out);
        out
    })
}

fn recthinker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recthinker"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn synth(
    name: &str,
    server: &Server,
    openai_extra: &str,
    env: &[(&str, &str)],
) -> (Output, PathBuf, Scratch) {
    let dir = scratch("openai-teacher");
    let out = dir.join(format!("{name}.jsonl"));
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nout = {:?}\nteacher = \"openai\"\nlimit_episodes = 2\nmin_ndcg = 0.0\n[agent]\nmax_turns = 3\n[openai]\nbase_url = {:?}\nmodel = \"teacher-model\"\napi_key_env = \"RT_TEST_KEY\"\nbackoff_s = 0.0\n{openai_extra}",
            data(),
            out,
            server.base_url
        ),
    )
    .unwrap();
    (
        recthinker(&["synth", "--config", cfg.to_str().unwrap()], env),
        out,
        dir, // the caller reads `out`: the directory lives as long as this guard
    )
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn native_tool_calls_become_protocol_turns() {
    // The very first request gets a 503: the client must retry it.
    let server = serve(|n, req| {
        if n == 0 {
            (503, r#"{"error":{"message":"overloaded"}}"#.into(), 0)
        } else {
            (200, agent_reply(req), 0)
        }
    });
    let (o, out, _dir) = synth("native", &server, "", &[("RT_TEST_KEY", "sk-test-123")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kept = lines(&out);
    assert_eq!(kept.len(), 2);
    for line in &kept {
        let m = line["messages"].as_array().unwrap();
        assert_eq!(m.len(), 5, "{line}");
        assert_eq!(
            m[2]["content"],
            "<think>I should ask similar users.</think>\n<tool_call>{\"arguments\":{\"k\":5,\"only_candidates\":true},\"name\":\"similar_users\"}</tool_call>"
        );
        let obs = m[3]["content"].as_str().unwrap();
        assert!(obs.starts_with("<tool_response>\n") && obs.ends_with("\n</tool_response>"));
        assert!(!obs.contains("Error"), "{obs}");
        assert_eq!(
            m[4]["content"],
            "<think>Candidate 3 fits best.</think>\n<answer>3, 1, 2, 4, 5, 6, 7, 8, 9, 10</answer>"
        );
        assert_eq!(line["tool_calls"], 1);
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["kept"], 2);
    assert_eq!(summary["failed_episodes"], 0);

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "one 503 retried, then 2 episodes x 2 turns");
    for req in &seen {
        assert_eq!(req.path, "/v1/chat/completions");
        assert_eq!(req.authorization.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(req.body["model"], "teacher-model");
        let tools: Vec<&str> = req.body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            tools,
            [
                "user_profile",
                "user_history",
                "similar_users",
                "item_info",
                "item_relations",
                "rank_candidates"
            ]
        );
    }
    // The second turn carries the assistant's call back and the observation under its id,
    // the same text the transcript holds.
    let second = seen.iter().find(|r| results_so_far(r) == 1).unwrap();
    let msgs = second.body["messages"].as_array().unwrap();
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], "call_1");
    let obs = msgs[3]["content"].as_str().unwrap();
    assert!(kept.iter().any(
        |l| l["messages"][3]["content"] == format!("<tool_response>\n{obs}\n</tool_response>")
    ));
}

#[test]
fn text_protocol_replies_work_without_native_tools() {
    let server = serve(|_, req| (200, agent_reply(req), 0));
    let dir = scratch("openai-teacher");
    let (cfg, out) = (dir.join("text.toml"), dir.join("text.jsonl"));
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nout = {:?}\nteacher = \"openai\"\nlimit_episodes = 2\nmin_ndcg = 0.0\n[openai]\nbase_url = {:?}\nmodel = \"m\"\napi_key_env = \"\"\nnative_tools = false\n",
            data(),
            out,
            server.base_url
        ),
    )
    .unwrap();
    let o = recthinker(&["synth", "--config", cfg.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kept = lines(&out);
    assert_eq!(kept.len(), 2);
    assert_eq!(
        kept[0]["messages"][2]["content"],
        "<think>Ask similar users.</think>\n<tool_call>{\"name\": \"similar_users\", \"arguments\": {\"only_candidates\": true}}</tool_call>"
    );
    let seen = server.seen.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|r| r.body.get("tools").is_none() && r.authorization.is_none()));
}

#[test]
fn request_failures_give_clear_errors() {
    // 401: fatal, no retry, the server's message shown.
    let server = serve(|_, _| {
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided"}}"#.into(),
            0,
        )
    });
    let (o, ..) = synth(
        "unauthorized",
        &server,
        "concurrency = 1\n",
        &[("RT_TEST_KEY", "bad")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("HTTP 401") && err.contains("Incorrect API key provided"),
        "{err}"
    );
    assert!(err.contains("/v1/chat/completions"), "{err}");
    assert_eq!(
        server.seen.lock().unwrap().len(),
        1,
        "401 must not be retried"
    );

    // A server slower than timeout_s: retried, then every episode fails.
    let slow = serve(|_, req| (200, agent_reply(req), 3000));
    let (o, ..) = synth(
        "slow",
        &slow,
        "timeout_s = 0.3\nmax_retries = 1\nconcurrency = 2\n",
        &[("RT_TEST_KEY", "k")],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("stopped after 2 failed episodes") && err.contains("gave up after 2 attempts"),
        "{err}"
    );
    assert_eq!(slow.seen.lock().unwrap().len(), 4);

    // The key variable is not set.
    let (o, ..) = synth("nokey", &server, "", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("RT_TEST_KEY") && err.contains("[openai]"),
        "{err}"
    );
}

/// Closing the loop: the `openai` teacher plays episodes against `recthinker serve` (SmolLM2,
/// the base model, as a stand-in for a trained agent). Every request the teacher makes is one
/// the server accepts (native tools, tool messages with ids, the protocol's text), and the
/// run ends with every episode played, none failed.
#[test]
fn synthesis_runs_against_recthinker_serve() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args([
            "serve",
            "--port",
            "0",
            "--served-model-name",
            "teacher-model",
            "--model",
        ])
        .arg(support::base_model())
        .env("RECTHINKER_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    let started = std::time::Instant::now();
    let dir = scratch("openai-teacher");
    let (cfg, out) = (dir.join("serve.toml"), dir.join("serve.jsonl"));
    // One episode, one turn of 16 tokens: the prompt (system prompt and six tool schemas,
    // ~1,500 tokens on SmolLM2's template) is what costs.
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nout = {:?}\nteacher = \"openai\"\nlimit_episodes = 1\nmin_ndcg = 0.0\n[agent]\nmax_turns = 1\n[openai]\nbase_url = {url:?}\nmodel = \"teacher-model\"\napi_key_env = \"\"\nmax_tokens = 16\n",
            data(),
            out,
        ),
    )
    .unwrap();
    let o = recthinker(&["synth", "--config", cfg.to_str().unwrap()], &[]);
    let health = {
        let addr = url.trim_start_matches("http://").trim_end_matches("/v1");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["failed_episodes"], 0, "{summary}");
    assert_eq!(health["invalid"], 0, "{health}");
    assert_eq!(health["failed"], 0, "{health}");
    assert!(health["served"].as_u64().unwrap() >= 1, "{health}");
    eprintln!(
        "synth against recthinker serve (SmolLM2): {} requests served in {:.1?}; summary {summary}",
        health["served"],
        started.elapsed()
    );
}
