//! `recthinker view` end to end, checked in headless Chromium (Debian `chromium`, installed by
//! scripts/setup.sh): the pages are loaded with `--dump-dom` and the rendered DOM is read.
//!
//! Inputs are real: a small synthetic store written as `data prepare` writes it, trajectories
//! from `recthinker eval` on a tiny random model plus agent rows scored and serialized by
//! `trajectory::{score, to_json}` (the eval writer) with answers placing the target at chosen
//! ranks and hostile model text, the SFT set of `recthinker synth` (scripted teacher), and a
//! run directory written by `RunDir` with its PNGs drawn by `plot`.

use datasets::{Episode, Split, Subset};
use lm::chat::Message;
use reward::RewardConfig;
use rollout::protocol::{answer_turn, call_turn, tool_response};
use rollout::{AgentRow, CallRecord, EndReason};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use testkit::{scratch, tiny_model};
use tools::{EpisodeView, ToolCall, World};
use trainer::run_dir::{Reporter, RunDir};
use trainer::trajectory::{score, to_json};

/// Model text that must stay text: it tries to close the data element and to run code.
const HOSTILE: &str =
    "</script><script>document.documentElement.setAttribute('data-pwned','script')</script>\
<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">";

fn recthinker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recthinker"))
        .args(args)
        .output()
        .expect("running recthinker")
}

fn ok(args: &[&str]) -> String {
    let out = recthinker(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A synthetic world (40 users, 80 items, 8 users per subset) and its store, once per run.
fn world() -> &'static (World, PathBuf) {
    static WORLD: OnceLock<(World, PathBuf)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let path = scratch("view-store").keep().join("store.h5");
        (testkit::world::synthetic_store(&path, 3), path)
    })
}

fn chromium() -> PathBuf {
    let names = ["chromium", "chromium-browser", "google-chrome"];
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .expect("no chromium on PATH: scripts/setup.sh installs Debian's `chromium`")
}

/// The DOM of `page#hash` after its scripts ran, from headless Chromium. Fails on a console
/// error (an uncaught exception, a blocked load or script) and on a page that did not finish.
fn dom(page: &Path, hash: &str) -> String {
    let profile = scratch("view-chromium");
    let url = format!("file://{}{hash}", page.canonicalize().unwrap().display());
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("running chromium");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium {url}: {stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "{url}: console messages: {console:#?}");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains(r#"data-ready="1""#), "{url}: page not ready");
    assert!(!dom.contains(r#"data-js-errors=""#), "{url}: script errors");
    assert!(!dom.contains(r#"data-pwned=""#), "{url}: injected code ran");
    dom
}

/// The value of attribute `name` in the tag text `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// The opening tags `<tr ...>` of the table body, in order.
fn rows(dom: &str) -> Vec<&str> {
    let start = dom.find(r#"<tbody id="rows">"#).expect("tbody");
    let body = &dom[start..start + dom[start..].find("</tbody>").expect("</tbody>")];
    body.match_indices("<tr ")
        .map(|(i, _)| &body[i..i + body[i..].find('>').unwrap()])
        .collect()
}

fn ndcgs(dom: &str) -> Vec<f64> {
    rows(dom)
        .iter()
        .map(|t| attr(t, "data-ndcg").unwrap().parse().unwrap())
        .collect()
}

/// The static page makes no request: outside the embedded data, every src/href is a `data:`
/// URL or an anchor and no address appears; the only `</script>` are the page's own three.
fn assert_self_contained(html: &str) {
    assert_eq!(html.to_lowercase().matches("</script").count(), 3);
    let open = r#"<script type="application/json" id="data">"#;
    let start = html.find(open).expect("data element") + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let markup = format!("{}{}", &html[..start], &html[end..]);
    for key in ["src=", "href=", "url(", "@import", "http://", "https://"] {
        for (i, _) in markup.match_indices(key) {
            let v = markup[i + key.len()..].trim_start_matches(['"', '\'']);
            assert!(
                (key == "src=" || key == "href=") && (v.starts_with("data:") || v.starts_with('#')),
                "external reference: {}",
                &markup[i..(i + 80).min(markup.len())]
            );
        }
    }
    assert!(html.contains("Content-Security-Policy"));
}

/// An agent row for `ep` that calls `user_profile` for real and answers with the target at
/// `rank` (None: a duplicate, invalid answer), scored and serialized as eval writes it.
fn crafted_line(w: &World, ep: &Episode, rank: Option<usize>, think: &str) -> Value {
    let view = EpisodeView::new(w, ep);
    let registry = tools::suite::standard(1200);
    let args = json!({});
    let obs = registry.call(w, &view, &ToolCall::new("user_profile", args.clone()));
    let n = ep.candidates.len();
    let target = ep.target_index as usize + 1;
    let answer = match rank {
        Some(r) => {
            let mut order: Vec<usize> = (1..=n).filter(|&c| c != target).collect();
            order.insert(r - 1, target);
            answer_turn(think, &order)
        }
        None => "<answer>1, 1</answer>".to_string(),
    };
    let row = AgentRow {
        episode: 0,
        sample: 0,
        messages: vec![
            Message::system(rollout::prompt::system_prompt(Some(&registry), 3)),
            Message::user(rollout::prompt::user_prompt(w, &view, 5)),
            Message::assistant(call_turn(think, "user_profile", args.clone())),
            Message::tool(tool_response(&obs.text)),
            Message::assistant(answer.clone()),
        ],
        calls: vec![CallRecord {
            raw: ToolCall::new("user_profile", args.clone()).text(),
            name: Some("user_profile".into()),
            arguments: Some(args),
            ok: obs.ok,
            duplicate: false,
            observation: obs.text,
        }],
        end: Some(EndReason::Answer),
        answer_text: Some(answer),
        prompt_tokens: 500,
        generated_tokens: 60,
        forced_tokens: 20,
        seconds: 0.5,
        ids: vec![],
        mask: vec![],
        logprobs: vec![],
    };
    let scored = score(&row, ep, &RewardConfig::default());
    to_json(&scored, ep, &w.data, "test", false)
}

#[test]
fn eval_trajectories_render_sort_filter_and_stay_inert() {
    let (w, store) = world();
    let dir = scratch("view-eval");
    let traj = dir.join("traj.jsonl");
    // Real eval lines: a tiny random model on two dense users, tools on.
    ok(&[
        "eval",
        "--model",
        s(&tiny_model("llama")),
        "--data",
        s(store),
        "--subset",
        "dense",
        "--limit-users",
        "2",
        "--max-new-tokens",
        "24",
        "--max-turns",
        "2",
        "--out",
        s(&dir.join("report.json")),
        "--trajectories",
        s(&traj),
    ]);
    let mut text = std::fs::read_to_string(&traj).unwrap();
    let real = text.lines().count();
    assert_eq!(real, 2);
    // Crafted rows on sparse users: the target at ranks 1, 3 and 7, and one invalid answer;
    // the rank-3 row carries the hostile text.
    let sparse = w.data.select(Split::Test, Subset::Sparse);
    let plan = [
        (Some(3), HOSTILE),
        (Some(1), "plain"),
        (None, "bad"),
        (Some(7), "late"),
    ];
    for (ep, (rank, think)) in sparse.iter().zip(plan) {
        text.push_str(&format!("{}\n", crafted_line(w, ep, rank, think)));
    }
    std::fs::write(&traj, &text).unwrap();
    let total = real + plan.len();

    let said = ok(&["view", s(&traj)]);
    let page = dir.join("traj.html");
    assert!(
        said.contains("traj.html") && said.contains(&format!("{total} episodes")),
        "{said}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);

    // Default view: one row per line, in file order.
    let d = dom(&page, "");
    let r = rows(&d);
    assert_eq!(r.len(), total);
    let order: Vec<&str> = r.iter().map(|t| attr(t, "data-index").unwrap()).collect();
    assert_eq!(order, ["0", "1", "2", "3", "4", "5"]);
    for col in [
        "NDCG@10",
        "subset",
        "reward",
        "valid",
        "tool calls",
        "turns",
        "gen. tokens",
    ] {
        assert!(d.contains(&format!(">{col}<")), "no column {col}");
    }

    // Sorting by NDCG, both ways: an invalid answer scores 0, a valid one 1 / log2(rank + 1)
    // (the crafted rows: ranks 3, 1, invalid, 7).
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ndcg: Vec<f64> = lines
        .iter()
        .map(|l| match (l["valid"].as_bool(), l["rank"].as_u64()) {
            (Some(true), Some(r)) => 1.0 / ((r + 1) as f64).log2(),
            _ => 0.0,
        })
        .collect();
    assert_eq!(&ndcg[real..], [0.5, 1.0, 0.0, 1.0 / 3.0]);
    let expect = |desc: bool| {
        let mut v = ndcg.clone();
        v.sort_by(|a, b| if desc { b.total_cmp(a) } else { a.total_cmp(b) });
        v
    };
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    };
    let desc = ndcgs(&dom(&page, "#sort=ndcg&dir=desc"));
    assert!(close(&desc, &expect(true)), "{desc:?}");
    let asc = ndcgs(&dom(&page, "#sort=ndcg&dir=asc"));
    assert!(close(&asc, &expect(false)), "{asc:?}");

    // Filters: text, validity, subset.
    assert_eq!(rows(&dom(&page, "#filter=sparse")).len(), plan.len());
    let invalid = dom(&page, "#valid=invalid&subset=sparse");
    assert_eq!(rows(&invalid).len(), 1);
    assert_eq!(attr(rows(&invalid)[0], "data-index"), Some("4"));

    // The hostile row opened: its text shown as text, the target marked third in the answer.
    let d = dom(&page, "#open=2");
    let start = d.find(r#"<section id="episode""#).expect("episode section");
    let sec = &d[start..start + d[start..].find("</section>").unwrap()];
    assert!(
        sec.contains("&lt;/script&gt;&lt;script&gt;document.documentElement"),
        "{sec}"
    );
    assert!(sec.contains("&lt;img src=x onerror="));
    assert_eq!(sec.matches("<script").count(), 0);
    assert_eq!(sec.matches("<img").count(), 0);
    assert!(
        sec.contains(r#"<div class="turn assistant">"#)
            && sec.contains(r#"<div class="turn tool">"#)
    );
    assert!(sec.contains(r#"<span class="name">user_profile</span>"#));
    let ans = &sec[sec.find(r#"<ol class="answer">"#).expect("answer list")..];
    let ans = &ans[..ans.find("</ol>").unwrap()];
    let items: Vec<&str> = ans.split("<li").skip(1).collect();
    assert_eq!(items.len(), sparse[0].candidates.len());
    let marked: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].starts_with(r#" class="target""#))
        .collect();
    assert_eq!(marked, [2], "{ans}");
    assert!(items[2].contains("target"));
}

#[test]
fn synth_lines_render_their_conversations() {
    let (_, store) = world();
    let dir = scratch("view-synth");
    let out = dir.join("sft.jsonl");
    let cfg = dir.join("synth.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {:?}\nout = {:?}\nteacher = \"scripted\"\nsplit = \"train\"\nlimit_episodes = 4\n\
             min_ndcg = 0.0\nseed = 0\n[agent]\nmax_turns = 3\n",
            s(store),
            s(&out)
        ),
    )
    .unwrap();
    ok(&["synth", "--config", s(&cfg)]);
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(lines > 0);
    let page = dir.join("sft-view.html");
    ok(&["view", s(&out), "--out", s(&page)]);
    assert_self_contained(&std::fs::read_to_string(&page).unwrap());
    let d = dom(&page, "#sort=ndcg&open=0");
    assert_eq!(rows(&d).len(), lines);
    assert!(d.contains(">teacher / method<") && d.contains(">scripted<"));
    let sec = &d[d.find(r#"<section id="episode""#).unwrap()..];
    assert!(
        sec.contains(r#"<div class="seg tool_call">"#),
        "no tool call rendered"
    );
    assert!(sec.contains(r#"<ol class="answer">"#), "no answer rendered");
}

#[test]
fn run_dir_page_draws_every_metric_beside_its_png() {
    let dir = scratch("view-run");
    let run = dir.join("rl");
    let mut rd = RunDir::create(&run, &json!({"lr": 1e-4}), &[Reporter::Jsonl]).unwrap();
    rd.start_logging(0).unwrap();
    for step in 1..=12u32 {
        let noise = ((step * 7919) % 13) as f64 / 13.0 - 0.5;
        let mut v = json!({"step": step, "loss": 1.0 / step as f64 + 0.1 * noise, "lr": 1e-4,
            "reward_mean": 0.05 * step as f64 + noise, "ndcg@10": 0.5 + 0.1 * noise,
            "valid_rate": 0.9, "tool_calls": 2.0 + noise});
        if step % 4 == 0 {
            v["val_ndcg@10"] = json!(0.6 + 0.01 * step as f64);
        }
        rd.log(&v).unwrap();
    }
    rd.redraw_plots();
    let metrics = 7;
    ok(&["view", s(&run)]);
    let page = run.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    // Every metric's PNG and the overview, embedded.
    assert_eq!(
        html.matches(r#"src="data:image/png;base64,"#).count(),
        metrics + 1
    );
    let d = dom(&page, "");
    // Six main curves, then one per metric; each draws its raw line.
    let charts: Vec<&str> = d.split(r#"<svg class="chart""#).skip(1).collect();
    assert_eq!(charts.len(), 6 + metrics);
    for c in &charts {
        assert!(c.contains(r#"<path class="raw"#), "{c}");
    }
    let chart = |m: &str| {
        *charts
            .iter()
            .find(|c| c.starts_with(&format!(r#" data-metric="{m}""#)))
            .unwrap_or_else(|| panic!("no chart {m}"))
    };
    assert!(chart("loss").contains(r#"<path class="smooth""#));
    assert!(chart("reward_mean").contains(r#"<path class="smooth""#));
    let val = chart("val_ndcg@10");
    assert!(!val.contains("smooth") && val.matches("<circle").count() == 3);
    assert!(d.contains(r#"data-metrics="7""#));
}

#[test]
fn bad_input_names_file_and_line() {
    let dir = scratch("view-bad");
    let good = json!({"user": "1", "pos": 3, "teacher": "scripted", "ndcg@10": 1.0, "tool_calls": 0, "messages": []});
    for (body, line, what) in [
        (
            format!("{good}\n\n{{\"messages\": 3}}\n"),
            3,
            "invalid type",
        ),
        (format!("{good}\n{{oops\n"), 2, "key must be a string"),
        (
            format!("{good}\n{{\"foo\": 1}}\n"),
            2,
            "not a trajectory line",
        ),
    ] {
        let f = dir.join("bad.jsonl");
        std::fs::write(&f, body).unwrap();
        let out = recthinker(&["view", s(&f)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!("bad.jsonl:{line}")) && err.contains(what),
            "{err}"
        );
    }
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\": 1, \"loss\": 1.0}\n{\"loss\": 2.0}\n",
    )
    .unwrap();
    let err = String::from_utf8_lossy(&recthinker(&["view", s(&run)]).stderr).into_owned();
    assert!(err.contains("metrics.jsonl:2: no numeric `step`"), "{err}");
    let err = String::from_utf8_lossy(&recthinker(&["view", s(&dir.join("none.jsonl"))]).stderr)
        .into_owned();
    assert!(err.contains("none.jsonl: no such file"), "{err}");
}
