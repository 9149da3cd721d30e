//! `recthinker data prepare | stats | episodes`.

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use datasets::store::{read_prepared, write_prepared, Reader, Writer};
use datasets::{PrepareConfig, Split, Subset};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tools::models::{CfModels, TrainOptions};
use tools::world::{horizon_sequences, Horizon};

#[derive(ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Read a raw dataset, split it, sample candidates and episodes, train the collaborative
    /// models on the training split (and again on what precedes the training episodes), and
    /// write everything to one HDF5 file.
    Prepare(PrepareArgs),
    /// Summarize a prepared file.
    Stats { file: PathBuf },
    /// Print episodes as JSON lines (raw dataset ids): user, history, candidates, target.
    Episodes {
        file: PathBuf,
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long, default_value = "all")]
        subset: String,
    },
}

#[derive(ClapArgs)]
struct PrepareArgs {
    /// ml-100k | ml-1m | amazon2018 | amazon2023
    #[arg(long, default_value = "ml-100k")]
    dataset: String,
    /// Directory of the raw files (ml-100k defaults to the copy PyPI recbole ships in .venv).
    #[arg(long)]
    input: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Seed of candidate sampling, subsets and model training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Iterated k-core filter (default: 5 for Amazon, off for MovieLens).
    #[arg(long)]
    k_core: Option<usize>,
    /// Users per evaluation subset (sparse, dense).
    #[arg(long, default_value_t = 100)]
    subset_users: usize,
    /// Training episodes per user.
    #[arg(long, default_value_t = 3)]
    train_episodes_per_user: usize,
    /// SASRec training epochs.
    #[arg(long, default_value_t = 200)]
    sasrec_epochs: usize,
    /// BPR-MF training epochs.
    #[arg(long, default_value_t = 40)]
    bpr_epochs: usize,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Prepare(p) => prepare(p),
        What::Stats { file } => stats(&file),
        What::Episodes {
            file,
            split,
            subset,
        } => episodes(&file, &split, &subset),
    }
}

fn prepare(a: PrepareArgs) -> Result<()> {
    let start = Instant::now();
    let raw = datasets::read_raw(&a.dataset, a.input.as_deref())?;
    eprintln!(
        "read {} interactions, {} items with metadata, {} users with metadata, {} KG facts",
        raw.interactions.len(),
        raw.items.len(),
        raw.users.len(),
        raw.kg.len()
    );
    let mut config = PrepareConfig::new(&a.dataset, a.seed);
    if let Some(k) = a.k_core {
        config.k_core = k;
    }
    config.subset_users = a.subset_users;
    config.train_episodes_per_user = a.train_episodes_per_user;
    let data = datasets::prepare(&raw, &config)?;
    eprintln!(
        "prepared {} users, {} items; episodes train {} valid {} test {} ({:.1}s)",
        data.users.len(),
        data.items.len(),
        data.train.len(),
        data.valid.len(),
        data.test.len(),
        start.elapsed().as_secs_f64()
    );
    let opts = TrainOptions {
        seed: a.seed,
        bpr_epochs: a.bpr_epochs,
        sasrec_epochs: a.sasrec_epochs,
        progress: true,
    };
    let w = Writer::create(&a.out)?;
    write_prepared(&w, &data)?;
    // One model set per knowledge horizon, same options and seeds: validation/test episodes
    // see models fit on the training split, training episodes models fit without any
    // training target.
    for h in Horizon::ALL {
        let t = Instant::now();
        let models = CfModels::train(&data, &horizon_sequences(&data, h), &opts)?;
        models.save(&w, h.group())?;
        eprintln!(
            "trained the {} horizon's models (/{}) in {:.1}s",
            h.name(),
            h.group(),
            t.elapsed().as_secs_f64()
        );
    }
    w.finish()?;
    eprintln!(
        "wrote {} in {:.1}s",
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn stats(file: &std::path::Path) -> Result<()> {
    let r = Reader::open(file)?;
    let d = read_prepared(&r)?;
    let lens: Vec<usize> = d.sequences.iter().map(Vec::len).collect();
    let n: usize = lens.iter().sum();
    let train_len = |users: &[u32]| {
        users.iter().map(|&u| d.train_len(u)).sum::<usize>() as f64 / users.len().max(1) as f64
    };
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "schema_version": r.attr("schema_version")?,
        "config": d.config,
        "users": d.users.len(),
        "items": d.items.len(),
        "interactions": n,
        "density": n as f64 / (d.users.len() * d.items.len()).max(1) as f64,
        "sequence_length": {"min": lens.iter().min(), "max": lens.iter().max(), "mean": n as f64 / lens.len().max(1) as f64},
        "kg_facts": d.kg.facts.len(),
        "episodes": {"train": d.train.len(), "valid": d.valid.len(), "test": d.test.len()},
        "subsets": {"sparse": d.sparse_users.len(), "dense": d.dense_users.len(),
                    "sparse_mean_train_history": train_len(&d.sparse_users), "dense_mean_train_history": train_len(&d.dense_users)},
        "models": r.has("models/bpr/dim"),
        "models_train": r.has("models_train/bpr/dim"),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn episodes(file: &std::path::Path, split: &str, subset: &str) -> Result<()> {
    let d = read_prepared(&Reader::open(file)?)?;
    let (split, subset) = (Split::parse(split)?, Subset::parse(subset)?);
    let mut out = std::io::stdout().lock();
    for e in d.select(split, subset) {
        let item = |i: u32| d.items[i as usize].raw_id.clone();
        let line = serde_json::json!({
            "user": d.users[e.user as usize].raw_id,
            "history": d.history(e).iter().map(|h| item(h.item)).collect::<Vec<_>>(),
            "candidates": e.candidates.iter().map(|&c| item(c)).collect::<Vec<_>>(),
            "target": item(d.target(e)),
        });
        writeln!(out, "{line}").context("writing to stdout")?;
    }
    Ok(())
}
