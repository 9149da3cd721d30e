//! `recthinker tools serve` on real MovieLens-100k, driven by the official Python MCP client
//! (`mcp`, through scripts/mcp_client_check.py) over stdio and streamable HTTP: the tool list
//! is the registry's, results are the text `recthinker tool` and in-process calls give, bad
//! calls are tool errors on a connection that keeps serving, `select_episode` sets a
//! session's episode, and evaluation episodes' outputs obey the leakage criteria.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;
use testkit::{prepare_ml100k, repo_root, scratch};
use tools::{EpisodeView, World};

const BIN: &str = env!("CARGO_BIN_EXE_recthinker");

fn data() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let out = scratch("mcp-server").keep().join("ml.h5");
        let t = Instant::now();
        prepare_ml100k(BIN, &out);
        eprintln!("prepared {} in {:.0?}", out.display(), t.elapsed());
        out
    })
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| tools::world::load(data()).unwrap())
}

/// What an in-process call gives for episode `split:subset:index` (found without the
/// server's code): the observation text and whether it was a good call.
fn in_process(episode: &str, call: &Value) -> (String, bool) {
    let w = world();
    let e = episode_of(episode);
    let reg = tools::suite::standard(2000);
    let obs = reg.call_text(w, &EpisodeView::new(w, e), &call.to_string());
    (obs.text, obs.ok)
}

fn episode_of(episode: &str) -> &'static datasets::Episode {
    let p: Vec<&str> = episode.split(':').collect();
    let split = datasets::Split::parse(p[0]).unwrap();
    let subset = datasets::Subset::parse(p[1]).unwrap();
    world().data.select(split, subset)[p[2].parse::<usize>().unwrap()]
}

/// Every tool with every argument shape the agent can use (as `tools/tests/leakage.rs`).
fn leakage_calls() -> Vec<Value> {
    let mut calls = vec![
        json!({"name": "user_profile", "arguments": {}}),
        json!({"name": "user_history", "arguments": {"limit": 50}}),
        json!({"name": "user_history", "arguments": {"order": "highest_rated", "limit": 50}}),
        json!({"name": "similar_users", "arguments": {"k": 20}}),
        json!({"name": "similar_users", "arguments": {"k": 20, "only_candidates": true}}),
    ];
    for by in ["all", "collaborative", "sequential", "popular"] {
        calls.push(json!({"name": "rank_candidates", "arguments": {"by": by}}));
    }
    for c in 1..=10 {
        calls.push(json!({"name": "item_info", "arguments": {"candidate": c}}));
        calls.push(json!({"name": "item_relations", "arguments": {"candidate": c}}));
    }
    calls
}

/// `call` with `"episode": episode` added to its arguments.
fn on(episode: &str, call: &Value) -> Value {
    let mut c = call.clone();
    c["arguments"][EPISODE] = json!(episode);
    c
}

const EPISODE: &str = "episode";

/// Runs the Python client with `calls` against `server` (`["--url", URL]` or `["--stdio",
/// ...]`) in `mode`; its JSON report.
fn client(calls: &[Value], mode: &str, server: &[&str]) -> Value {
    let dir = scratch("mcp-client");
    let path = dir.join("calls.json");
    std::fs::write(&path, serde_json::to_string(calls).unwrap()).unwrap();
    let t = Instant::now();
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("scripts/mcp_client_check.py"))
        .arg("--calls")
        .arg(&path)
        .args(["--mode", mode])
        .args(server)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcp_client_check.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{} calls ({mode}, {}) in {:.1?}",
        calls.len(),
        server[0],
        t.elapsed()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdio_client(calls: &[Value]) -> Value {
    let d = data().to_str().unwrap();
    client(
        calls,
        "auto",
        &["--stdio", BIN, "tools", "serve", "--data", d],
    )
}

/// `recthinker tool` for one call, as printed (without println's newline).
fn tool_cli(episode: &str, call: &Value) -> String {
    let out = Command::new(BIN)
        .args([
            "tool",
            "--data",
            data().to_str().unwrap(),
            "--episode",
            episode,
        ])
        .args(["--call", &call.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

fn results(report: &Value) -> &Vec<Value> {
    report["results"].as_array().unwrap()
}

/// Asserts result `r` is a tool error whose text contains every one of `needles`.
fn assert_error(r: &Value, needles: &[&str]) {
    let text = r["text"].as_str().unwrap();
    assert_eq!(r["is_error"], true, "{r}");
    for n in needles {
        assert!(text.contains(n), "{:?} lacks {n:?}: {text}", r["arguments"]);
    }
}

/// Asserts each result equals the in-process call on its episode, and the leakage
/// criterion of `tools/tests/leakage.rs`: an evaluation target is in neither the user's
/// history nor what the user-side tools say about it.
fn assert_in_process(rs: &[Value]) {
    let w = world();
    for r in rs {
        let episode = r["arguments"][EPISODE].as_str().unwrap();
        let mut call = json!({"name": r["name"], "arguments": r["arguments"]});
        call["arguments"].as_object_mut().unwrap().remove(EPISODE);
        let (text, ok) = in_process(episode, &call);
        assert_eq!(r["text"].as_str().unwrap(), text, "{episode} {call}");
        assert_eq!(r["is_error"], !ok, "{episode} {call}");
        let e = episode_of(episode);
        let target = w.data.target(e);
        let title = w.title(target);
        let name = r["name"].as_str().unwrap();
        if !episode.starts_with("train") && ["user_profile", "user_history"].contains(&name) {
            let same_title = w.data.history(e).iter().any(|h| w.title(h.item) == title);
            assert!(
                same_title || !r["text"].as_str().unwrap().contains(title.as_str()),
                "{episode} {call} names the target {title}"
            );
        }
    }
}

#[test]
fn stdio_serves_the_registry_with_errors_and_sessions() {
    let ep = "test:dense:0";
    let profile = json!({"name": "user_profile", "arguments": {}});
    let rank = json!({"name": "rank_candidates", "arguments": {"by": "all"}});
    let mut calls = vec![
        on(ep, &profile),
        on(ep, &rank),
        // Bad calls, each a tool error; the session goes on.
        json!({"name": "nope", "arguments": {}}),
        on(
            ep,
            &json!({"name": "item_info", "arguments": {"candidate": 11}}),
        ),
        on(
            ep,
            &json!({"name": "item_info", "arguments": {"candidate": "three"}}),
        ),
        on(
            ep,
            &json!({"name": "user_history", "arguments": {"colour": "red"}}),
        ),
        on("test:dense:100000", &profile),
        on("test:medium:0", &profile),
        on("test:dense", &profile),
        json!({"name": "user_profile", "arguments": {"episode": 7}}),
        profile.clone(),
        json!({"name": "select_episode", "arguments": {}}),
        json!({"name": "select_episode", "arguments": {"episode": "valid:all:-1"}}),
        // The session's episode, then an explicit one over it.
        json!({"name": "select_episode", "arguments": {"episode": ep}}),
        profile.clone(),
        rank.clone(),
        on("test:sparse:3", &profile),
    ];
    // Leakage calls on evaluation episodes of both subsets and splits, and a training one.
    let episodes = [
        "test:dense:0",
        "test:sparse:1",
        "valid:dense:2",
        "train:all:5",
    ];
    let first = calls.len();
    for e in episodes {
        calls.extend(leakage_calls().iter().map(|c| on(e, c)));
    }
    let report = stdio_client(&calls);
    let rs = results(&report);
    assert_eq!(rs.len(), calls.len());

    // The tool list is the registry's, each with the optional episode, plus select_episode.
    let schemas = tools::suite::standard(2000).schemas();
    let listed = report["tools"].as_array().unwrap();
    let registry = schemas.as_array().unwrap();
    assert_eq!(listed.len(), registry.len() + 1);
    for (l, s) in listed.iter().zip(registry) {
        let f = &s["function"];
        assert_eq!(l["name"], f["name"]);
        assert_eq!(l["description"], f["description"]);
        let mut expected = f["parameters"].clone();
        let (mut got, props) = (l["inputSchema"].clone(), "properties");
        assert!(got[props][EPISODE]["type"] == "string", "{got}");
        got[props].as_object_mut().unwrap().remove(EPISODE);
        expected.as_object_mut().unwrap().remove("$schema");
        assert_eq!(got, expected, "{}", f["name"]);
    }
    let select = &listed[registry.len()];
    assert_eq!(select["name"], "select_episode");
    assert_eq!(select["inputSchema"]["required"], json!(["episode"]));

    // Same text as `recthinker tool`, for the episode given per call and by the session.
    for (i, call) in [(0, &profile), (1, &rank), (14, &profile), (15, &rank)] {
        assert_eq!(rs[i]["is_error"], false, "{}", rs[i]);
        assert_eq!(
            rs[i]["text"].as_str().unwrap(),
            tool_cli(ep, call),
            "{call}"
        );
    }
    assert_eq!(
        rs[16]["text"].as_str().unwrap(),
        in_process("test:sparse:3", &profile).0
    );
    assert_error(&rs[2], &["unknown tool \"nope\"", "select_episode"]);
    assert_error(&rs[3], &["item_info", "out of range"]);
    assert_error(&rs[4], &["item_info", "type integer"]);
    assert_error(&rs[5], &["user_history", "unknown argument \"colour\""]);
    assert_error(&rs[6], &["user_profile", "only 100 episodes in test:dense"]);
    assert_error(&rs[7], &["user_profile", "subset `medium`"]);
    assert_error(&rs[8], &["user_profile", "SPLIT:SUBSET:INDEX"]);
    assert_error(&rs[9], &["user_profile", "\"episode\" must be a string"]);
    assert_error(
        &rs[10],
        &[
            "user_profile",
            "no episode",
            "select_episode",
            "test:dense 100",
        ],
    );
    assert_error(
        &rs[11],
        &["select_episode", "missing required argument \"episode\""],
    );
    assert_error(&rs[12], &["select_episode", "index `-1`"]);
    assert_eq!(rs[13]["is_error"], false, "{}", rs[13]);
    assert!(rs[13]["text"]
        .as_str()
        .unwrap()
        .starts_with("Selected episode test:dense:0"));

    assert_in_process(&rs[first..]);
}

/// `recthinker tools serve --transport http --port 0`, killed on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server() -> HttpServer {
    let mut child = Command::new(BIN)
        .args(["tools", "serve", "--transport", "http", "--port", "0"])
        .args(["--data", data().to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(at) = line.find("http://") {
            break line[at..].to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    HttpServer { child, url }
}

#[test]
fn streamable_http_serves_sessions_and_stateless_calls() {
    let server = http_server();
    let url = server.url.as_str();
    let ep = "test:dense:0";
    let profile = json!({"name": "user_profile", "arguments": {}});

    // Handshake-era clients get a session: select_episode lasts.
    let calls = [
        json!({"name": "select_episode", "arguments": {"episode": ep}}),
        profile.clone(),
        json!({"name": "rank_candidates", "arguments": {"by": "all"}}),
        json!({"name": "rank_candidates", "arguments": {"by": "everything"}}),
    ];
    let report = client(&calls, "legacy", &["--url", url]);
    let rs = results(&report);
    assert_eq!(rs[0]["is_error"], false, "{}", rs[0]);
    assert_eq!(rs[1]["text"].as_str().unwrap(), tool_cli(ep, &profile));
    assert_eq!(rs[2]["text"].as_str().unwrap(), in_process(ep, &calls[2]).0);
    assert_error(&rs[3], &["rank_candidates", "must be one of"]);

    // 2026-07-28 is stateless over HTTP: episodes go with each call, and select_episode
    // says so. Two clients at once on one server, many calls each.
    let stateless = [
        json!({"name": "select_episode", "arguments": {"episode": ep}}),
        profile.clone(),
        json!({"name": "nope", "arguments": {"episode": ep}}),
    ];
    let report = client(&stateless, "auto", &["--url", url]);
    assert_eq!(report["protocol_version"], "2026-07-28");
    assert_eq!(report["server"], "recthinker");
    let rs = results(&report);
    assert_error(&rs[0], &["select_episode", "stateless", "pass \"episode\""]);
    assert_error(&rs[1], &["user_profile", "no episode"]);
    assert_error(&rs[2], &["unknown tool"]);
    let batches: Vec<Vec<Value>> = ["test:dense:0", "valid:sparse:4"]
        .iter()
        .map(|e| leakage_calls().iter().map(|c| on(e, c)).collect())
        .collect();
    let reports: Vec<Value> = std::thread::scope(|s| {
        let running: Vec<_> = batches
            .iter()
            .map(|b| s.spawn(|| client(b, "auto", &["--url", url])))
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &reports {
        assert_in_process(results(r));
    }
}
