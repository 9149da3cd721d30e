//! `explore_presets` (synth config): the scripted teacher writes each of its plans once per
//! `rank_candidates` preset and the rejection filter keeps the best per episode. Checked on
//! a synthetic store against the same synthesis without exploring: every episode's kept
//! trajectory is at least as good, the kept set uses more than one preset, and every answer
//! is the ranking its own `rank_candidates` call returned.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use testkit::scratch;
use trainer::synth::SynthConfig;

fn store(dir: &Path) -> PathBuf {
    let path = dir.join("store.h5");
    testkit::world::synthetic_store(&path, 5);
    path
}

/// The kept lines keyed by (user, pos), and the summary.
fn synth(dir: &Path, store: &Path, explore: bool) -> (HashMap<(String, u64), Value>, Value) {
    let out = dir.join(format!("sft-{explore}.jsonl"));
    let cfg = dir.join(format!("synth-{explore}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "data = {store:?}\nout = {out:?}\nteacher = \"scripted\"\nsplit = \"train\"\n\
             min_ndcg = 0.0\nexplore_presets = {explore}\nseed = 0\n[agent]\nmax_turns = 3\n"
        ),
    )
    .unwrap();
    let c: SynthConfig = trainer::config::load(&cfg).expect("synth config");
    let summary = trainer::synth::run(&c, &cfg).expect("synth");
    let lines = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let key = (
                v["user"].as_str().unwrap().to_string(),
                v["pos"].as_u64().unwrap(),
            );
            (key, v)
        })
        .collect();
    (lines, summary)
}

/// The comma-separated numbers after the last `prefix` in `text`, up to `end` (the last:
/// the synthetic titles are hostile and may hold `<answer>`).
fn list_after(text: &str, prefix: &str, end: char) -> Vec<usize> {
    let at = text
        .rfind(prefix)
        .unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
    let rest = &text[at + prefix.len()..];
    let rest = &rest[..rest.find(end).unwrap_or(rest.len())];
    rest.split(',').map(|x| x.trim().parse().unwrap()).collect()
}

#[test]
fn exploring_presets_keeps_the_best_ranking_per_episode() {
    let dir = scratch("synth-explore");
    let store = store(&dir);
    let (plain, plain_summary) = synth(&dir, &store, false);
    let (explored, summary) = synth(&dir, &store, true);
    assert!(plain.len() > 20, "{plain_summary}");
    assert_eq!(
        explored.len(),
        plain.len(),
        "min_ndcg 0 keeps every valid episode"
    );
    let mut better = 0;
    for (key, p) in &plain {
        let e = &explored[key];
        let (pn, en) = (
            p["ndcg@10"].as_f64().unwrap(),
            e["ndcg@10"].as_f64().unwrap(),
        );
        assert!(en >= pn - 1e-12, "{key:?}: explored {en} < adaptive {pn}");
        better += usize::from(en > pn + 1e-12);
    }
    let by = summary["rank_candidates_by"].as_object().unwrap();
    assert!(by.len() >= 2, "one preset kept: {summary}");
    assert_eq!(
        by.values().map(|v| v.as_u64().unwrap()).sum::<u64>() as usize,
        explored.len()
    );
    // Each answer copies the ranking its own rank_candidates call returned.
    for v in explored.values() {
        let msgs = v["messages"].as_array().unwrap();
        let tool = msgs
            .iter()
            .rev()
            .find(|m| m["role"] == "tool")
            .expect("a tool turn")["content"]
            .as_str()
            .unwrap();
        let answer = msgs.last().unwrap()["content"].as_str().unwrap();
        let first = tool
            .lines()
            .find(|l| l.starts_with("Ranking by"))
            .expect(tool);
        let ranked = list_after(first, ": ", '\n');
        assert_eq!(list_after(answer, "<answer>", '<'), ranked, "{tool}");
    }
    assert!(
        better > 0,
        "exploring never found a better ranking in {} episodes",
        plain.len()
    );
    eprintln!(
        "synth_explore: {} episodes, {better} ranked better by another preset; kept presets {by:?}",
        plain.len()
    );
}
