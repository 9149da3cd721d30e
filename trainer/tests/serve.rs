//! `recthinker serve` as a real process on a tiny random Qwen2.5 model (Qwen2.5's real chat
//! template: tools and tool calls rendered natively), driven by the official `openai` Python
//! client through scripts/openai_client_check.py (models, plain and streamed chat, n > 1,
//! seeds, stop sequences, lengths, a tool round trip, usage equal to the tokenizer's counts,
//! 4xx bodies naming the field, 32 concurrent clients, a full queue, SIGTERM), and by raw
//! sockets for clients that misbehave (issue 14 item 5): a slow reader, clients that leave
//! mid-stream or mid-request, 1,000 malformed requests in a row; the server keeps serving
//! the others the same text, and its resident memory is reported before and after.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{repo_root, tiny_model};

const BIN: &str = env!("CARGO_BIN_EXE_recthinker");
const MODEL_ID: &str = "tiny-qwen2.5-v1";

struct Server {
    child: Child,
    /// The served model id (the directory's name).
    id: String,
    /// `127.0.0.1:PORT`.
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0"])
            .args(extra)
            .env("RECTHINKER_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting recthinker serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(p) = line.find("on http://") {
                    let addr = line[p + 10..].trim_end_matches("/v1").to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let id = model.file_name().unwrap().to_string_lossy().into_owned();
        Server {
            child,
            id,
            addr,
            log,
        }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Resident memory from /proc/PID/status, in MB.
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }

    fn health(&self) -> Value {
        let (status, body) = request(&self.addr, "GET", "/health", "");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the engine holds no request.
    fn wait_idle(&self) -> Value {
        let t = Instant::now();
        loop {
            let h = self.health();
            if h["running_rows"] == 0 && h["queued"] == 0 {
                return h;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "never idle: {h}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn model() -> PathBuf {
    tiny_model("qwen2.5")
}

/// Runs scripts/openai_client_check.py against `server`; its JSON report.
fn client_check(server: &Server, args: &[&str]) -> Value {
    let t = Instant::now();
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("scripts/openai_client_check.py"))
        .args(["--base-url", &server.base_url(), "--model", &server.id])
        .args(args)
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .expect("running .venv/bin/python (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "openai_client_check.py {args:?} failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log.lock().unwrap().join("\n")
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("openai client {args:?} in {:.1?}: {report}", t.elapsed());
    report
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    split_response(&raw)
}

fn split_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn chat_body(extra: Value) -> String {
    let mut b = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hello."}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

/// The content of a non-streamed greedy reply (the reference the server must keep giving).
fn greedy(addr: &str) -> String {
    let (status, body) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat_body(json!({"temperature": 0, "max_tokens": 24})),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn openai_client_chat_tools_errors_and_32_concurrent_clients() {
    let dir = model();
    let server = Server::start(&dir, &["--max-batch", "8"]);
    let report = client_check(
        &server,
        &[
            "--model-dir",
            dir.to_str().unwrap(),
            "--check",
            "api",
            "--check",
            "load",
            "--clients",
            "32",
            "--requests",
            "4",
            "--max-tokens",
            "16",
        ],
    );
    assert_eq!(report["load"]["completed"], 128);
    let h = server.health();
    assert_eq!(h["failed"], 0, "{h}");
    assert_eq!(h["rejected"], 0, "{h}");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&model(), &["--max-batch", "1", "--max-queue", "1"]);
    let report = client_check(
        &server,
        &["--check", "queue", "--clients", "10", "--max-tokens", "400"],
    );
    assert!(report["queue"]["refused_429"].as_u64().unwrap() >= 1);
    assert_eq!(server.health()["rejected"], report["queue"]["refused_429"]);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let mut server = Server::start(&model(), &["--max-batch", "1", "--max-queue", "4"]);
    let pid = server.child.id().to_string();
    let report = client_check(
        &server,
        &["--check", "sigterm", "--pid", &pid, "--max-tokens", "450"],
    );
    assert_eq!(report["sigterm"]["completion_tokens"], 450);
    assert_eq!(report["sigterm"]["queued_completion_tokens"], 40);
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
}

/// A raw streaming request on its own connection.
fn send_stream_request(s: &mut TcpStream, addr: &str, n: usize, max_tokens: usize) {
    let body = chat_body(
        json!({"stream": true, "n": n, "max_tokens": max_tokens, "temperature": 1.0,
        "seed": 1, "ignore_eos": true, "stream_options": {"include_usage": true}}),
    );
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

/// A client whose receive buffer is 4 KB and that reads 1 KB every 50 ms (20 KB/s; the
/// stream is ~400 KB) until `fast` is set (or a minute passed), then the rest at once;
/// `progress` is the bytes read so far. The raw response.
fn slow_reader(addr: String, fast: Arc<AtomicBool>, progress: Arc<AtomicUsize>) -> Vec<u8> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let to: std::net::SocketAddr = addr.parse().unwrap();
    sock.connect(&to.into()).unwrap();
    let mut s: TcpStream = sock.into();
    send_stream_request(&mut s, &addr, 4, 450);
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let t = Instant::now();
    while !fast.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..k]);
        progress.store(raw.len(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
    s.read_to_end(&mut raw).unwrap();
    raw
}

/// The malformed requests of the 1,000-in-a-row run: (method, path, body, status, param).
fn malformed_kinds() -> Vec<(&'static str, &'static str, Vec<u8>, u16, Value)> {
    let chat = |extra: Value| chat_body(extra).into_bytes();
    let msgs = |m: Value| chat(json!({ "messages": m }));
    vec![
        (
            "POST",
            "/v1/chat/completions",
            b"{not json".to_vec(),
            400,
            Value::Null,
        ),
        (
            "POST",
            "/v1/chat/completions",
            b"[1, 2]".to_vec(),
            400,
            Value::Null,
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![0xff, 0xfe, 0x00, 0x7b],
            400,
            Value::Null,
        ),
        (
            "POST",
            "/v1/chat/completions",
            "[".repeat(60_000).into_bytes(),
            400,
            Value::Null,
        ),
        (
            "POST",
            "/v1/chat/completions",
            json!({"model": MODEL_ID}).to_string().into_bytes(),
            400,
            json!("messages"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            msgs(json!("hi")),
            400,
            json!("messages"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            msgs(json!([{"role": "wizard", "content": "x"}])),
            400,
            json!("messages[0].role"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            msgs(json!([{"role": "user", "content": 5}])),
            400,
            json!("messages[0].content"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            400,
            json!("temperature"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"n": 0})),
            400,
            json!("n"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"max_tokens": -1})),
            400,
            json!("max_tokens"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"max_tokens": 100000})),
            400,
            json!("max_tokens"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"stop": ["a", 1]})),
            400,
            json!("stop[1]"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]})),
            400,
            json!("tools[0].function.name"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat(json!({"model": "no-such-model"})),
            404,
            json!("model"),
        ),
        (
            "POST",
            "/v1/chat/completions",
            vec![b' '; 70_000],
            413,
            Value::Null,
        ),
        ("GET", "/v1/chat/completions", Vec::new(), 405, Value::Null),
        ("POST", "/v1/completions", b"{}".to_vec(), 404, Value::Null),
    ]
}

#[test]
fn bad_clients_slow_leaving_and_malformed_leave_the_server_serving_with_bounded_memory() {
    let server = Server::start(
        &model(),
        &[
            "--max-batch",
            "8",
            "--max-queue",
            "16",
            "--max-body-bytes",
            "65536",
        ],
    );
    let addr = server.addr.clone();
    let reference = greedy(&addr);
    // Warm-up at full batch (the KV cache, the allocator), streamed and not.
    for _ in 0..2 {
        let mut s = TcpStream::connect(&addr).unwrap();
        send_stream_request(&mut s, &addr, 4, 450);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        assert_eq!(greedy(&addr), reference);
    }
    server.wait_idle();
    let rss_before = server.rss_mb();

    // A slow reader: the engine finishes its rows and serves others while it reads.
    let t = Instant::now();
    let progress = Arc::new(AtomicUsize::new(0));
    let fast = Arc::new(AtomicBool::new(false));
    let slow = {
        let (addr, fast, progress) = (addr.clone(), fast.clone(), progress.clone());
        std::thread::spawn(move || slow_reader(addr, fast, progress))
    };
    while progress.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(greedy(&addr), reference);
        latencies.push(t.elapsed().as_secs_f64());
    }
    let h = server.wait_idle();
    let read_while_idle = progress.load(Ordering::SeqCst);
    fast.store(true, Ordering::SeqCst);
    let raw = slow.join().unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert_eq!(text.matches("\"finish_reason\":\"length\"").count(), 4);
    assert!(text.contains("\"completion_tokens\":1800"));
    assert!(text.trim_end().ends_with("data: [DONE]") || text.contains("data: [DONE]\n\n"));
    eprintln!(
        "slow client: engine idle ({h}) after the client had read {read_while_idle} of {} bytes; \
         5 other requests meanwhile took {:.3?} s each; the whole stream read in {:.1?}",
        raw.len(),
        latencies,
        t.elapsed()
    );
    assert!(read_while_idle < raw.len());

    // Clients that leave: mid-stream, while waiting for a reply, mid-headers, mid-body.
    let t = Instant::now();
    let cancelled_before = server.health()["cancelled"].as_u64().unwrap();
    let rounds = 10;
    for _ in 0..rounds {
        let mut s = TcpStream::connect(&addr).unwrap();
        send_stream_request(&mut s, &addr, 4, 450);
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains("\"content\":\"") || seen.len() < 2000 {
            let k = s.read(&mut buf).unwrap();
            assert!(k > 0, "stream ended early");
            seen.extend_from_slice(&buf[..k]);
        }
        drop(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        let body = chat_body(json!({"n": 4, "max_tokens": 450, "ignore_eos": true}));
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Le"
        )
        .unwrap();
        drop(s);
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5000\r\n\r\n{{\"model\": ").unwrap();
        drop(s);
    }
    let h = server.wait_idle();
    let cancelled = h["cancelled"].as_u64().unwrap() - cancelled_before;
    eprintln!(
        "{} clients left (mid-stream, waiting, mid-headers, mid-body): {cancelled} generations cancelled; idle again {:.1?} after the first",
        4 * rounds,
        t.elapsed()
    );
    // Each left generation was 4 x 450 tokens; had they run to the end the engine would have
    // been busy for all 20 of them.
    assert!(cancelled >= (2 * rounds - 2) as u64, "{h}");
    assert_eq!(greedy(&addr), reference);

    // 1,000 malformed requests in a row on one keep-alive connection.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let kinds = malformed_kinds();
    let t = Instant::now();
    for i in 0..1000 {
        let (method, path, body, status, param) = &kinds[i % kinds.len()];
        let url = format!("http://{addr}{path}");
        let mut resp = match *method {
            "GET" => agent.get(&url).call(),
            _ => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(&body[..]),
        }
        .unwrap_or_else(|e| panic!("request {i} ({method} {path}): {e}"));
        let got = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        assert_eq!(got, *status, "request {i}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{i}: {e}: {text}"));
        assert_eq!(&v["error"]["param"], param, "request {i}: {text}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if i % 100 == 99 {
            let mut ok = agent
                .post(&format!("http://{addr}/v1/chat/completions"))
                .header("Content-Type", "application/json")
                .send(chat_body(json!({"temperature": 0, "max_tokens": 24})).as_bytes())
                .unwrap();
            let v: Value = serde_json::from_str(&ok.body_mut().read_to_string().unwrap()).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], json!(reference));
        }
    }
    let malformed_s = t.elapsed().as_secs_f64();
    assert_eq!(greedy(&addr), reference);
    let h = server.wait_idle();
    assert!(h["invalid"].as_u64().unwrap() >= 1000, "{h}");
    let rss_after = server.rss_mb();
    eprintln!(
        "1,000 malformed requests ({} kinds) in {malformed_s:.2} s; RSS before the bad clients \
         {rss_before:.1} MB, after {rss_after:.1} MB ({:+.1} MB); health {h}",
        kinds.len(),
        rss_after - rss_before
    );
    assert!(
        rss_after - rss_before < 50.0,
        "RSS grew by {:.1} MB",
        rss_after - rss_before
    );
}

#[test]
fn smollm2_chats_and_takes_a_tool_round_trip_through_a_template_without_tools() {
    let dir = testkit::base_model();
    let server = Server::start(&dir, &["--max-batch", "4"]);
    let report = client_check(&server, &["--check", "chat", "--max-tokens", "12"]);
    let content = report["chat"]["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{content}");
}
