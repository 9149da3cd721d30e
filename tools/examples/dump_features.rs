//! Exploration: dumps every episode's per-candidate signals (raw, `fusion::Signal::ALL`
//! order), its history with timestamps, both horizons' sequences and the test subsets as JSON
//! lines, for trying rankers offline (how the transitions signal was found: docs/results.md).
//!
//!     cargo run --release -p tools --example dump_features -- STORE.h5 OUT.jsonl
use datasets::Split;
use serde_json::json;
use std::io::Write;
use tools::fusion::Signal;
use tools::world::{load, EpisodeView, Horizon};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, out_path] = args.as_slice() else {
        anyhow::bail!("usage: dump_features STORE.h5 OUT.jsonl");
    };
    let w = load(std::path::Path::new(store))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(out_path)?);
    for (name, split) in [
        ("train", Split::Train),
        ("valid", Split::Valid),
        ("test", Split::Test),
    ] {
        for e in w.data.episodes(split) {
            let v = EpisodeView::new(&w, e);
            let sig: Vec<Vec<f64>> = Signal::ALL.iter().map(|s| s.scores(&v)).collect();
            let hist: Vec<u32> = v.history.iter().map(|x| x.item).collect();
            let ease = v.knowledge.ease().score(&hist, v.candidates);
            let times: Vec<i64> = v.history.iter().map(|x| x.timestamp).collect();
            writeln!(
                out,
                "{}",
                json!({"split": name, "user": e.user, "pos": e.pos, "cands": v.candidates,
                "target": e.target_index, "hist": hist, "times": times, "sig": sig, "ease": ease})
            )?;
        }
    }
    writeln!(
        out,
        "{}",
        json!({"sparse": w.data.sparse_users, "dense": w.data.dense_users})
    )?;
    for h in Horizon::ALL {
        let k = match h {
            Horizon::Eval => &w.eval,
            Horizon::Train => &w.train,
        };
        let seqs: Vec<Vec<(u32, i64)>> = k
            .sequences
            .iter()
            .map(|s| s.iter().map(|e| (e.item, e.timestamp)).collect())
            .collect();
        writeln!(out, "{}", json!({"horizon": h.name(), "seqs": seqs}))?;
    }
    Ok(())
}
