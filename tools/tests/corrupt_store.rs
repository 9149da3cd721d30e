//! A prepared store (data and both horizons' models, `recthinker data prepare`'s layout)
//! with each of its HDF5 datasets in turn deleted, cut short, emptied, filled with
//! out-of-range values or stored as another type, then loaded as every command loads it
//! (`tools::world::load`). Each case must end without a panic: an error that names the
//! file and the HDF5 dataset, or (when the damage leaves a consistent store, e.g. other
//! ratings) a world whose tools still answer every call.
//!
//! Case counts are printed (`cargo test -p tools --test corrupt_store -- --nocapture`).

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};
use serde_json::json;
use std::path::{Path, PathBuf};
use tools::{EpisodeView, World};

fn scratch() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(format!(
            "target/test-scratch/corrupt-store-{}",
            std::process::id()
        ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A small synthetic world written as `data prepare` writes it.
fn write_store(path: &Path) -> World {
    testkit::world::synthetic_store(path, 3)
}

/// Every dataset in the file, by full path.
fn datasets_of(g: &hdf5::Group, out: &mut Vec<String>) {
    for d in g.datasets().expect("datasets") {
        out.push(d.name());
    }
    for sub in g.groups().expect("groups") {
        datasets_of(&sub, out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    Deleted,
    Halved,
    Emptied,
    OutOfRange,
    Retyped,
}

/// Replaces dataset `name` of `file` by `data`.
fn replace<T: hdf5::H5Type>(f: &hdf5::File, name: &str, data: &[T]) {
    f.unlink(name).expect("unlink");
    f.new_dataset_builder()
        .with_data(data)
        .create(name)
        .expect("create");
}

fn damaged<T: hdf5::H5Type + Clone>(
    f: &hdf5::File,
    name: &str,
    damage: Damage,
    bad_value: T,
    other_type: impl FnOnce(usize),
) {
    let data: Vec<T> = f
        .dataset(name)
        .and_then(|d| d.read_raw())
        .expect("reading a dataset");
    match damage {
        Damage::Deleted => f.unlink(name).expect("unlink"),
        Damage::Halved => replace(f, name, &data[..data.len() / 2]),
        Damage::Emptied => replace::<T>(f, name, &[]),
        Damage::OutOfRange => replace(f, name, &vec![bad_value; data.len().max(1)]),
        Damage::Retyped => {
            f.unlink(name).expect("unlink");
            other_type(data.len());
        }
    }
}

/// Applies `damage` to dataset `name` of the store at `path`.
fn apply(path: &Path, name: &str, damage: Damage) {
    let f = hdf5::File::open_rw(path).expect("open_rw");
    let ty = f
        .dataset(name)
        .and_then(|d| d.dtype())
        .and_then(|t| t.to_descriptor())
        .expect("dtype");
    let as_strings = |n: usize| {
        let v: Vec<VarLenUnicode> = (0..n)
            .map(|i| format!("x{i}").parse().expect("unicode"))
            .collect();
        f.new_dataset_builder()
            .with_data(&v)
            .create(name)
            .expect("create");
    };
    let as_floats = |n: usize| {
        f.new_dataset_builder()
            .with_data(&vec![0.5f64; n])
            .create(name)
            .expect("create");
    };
    match ty {
        TypeDescriptor::Unsigned(IntSize::U4) => damaged(&f, name, damage, u32::MAX, as_strings),
        TypeDescriptor::Unsigned(IntSize::U8) => damaged(&f, name, damage, u64::MAX, as_strings),
        TypeDescriptor::Integer(IntSize::U8) => damaged(&f, name, damage, i64::MAX, as_strings),
        TypeDescriptor::Float(FloatSize::U4) => damaged(&f, name, damage, f32::NAN, as_strings),
        TypeDescriptor::VarLenUnicode => {
            let bad: VarLenUnicode = "{\"title\": [".parse().expect("unicode");
            damaged(&f, name, damage, bad, as_floats)
        }
        other => panic!("{name}: a stored type this test does not know: {other:?}"),
    }
}

/// What the tools of a loaded (damaged but consistent) world answer: every tool on a few
/// episodes of each split, without a panic.
fn smoke(w: &World) {
    let reg = tools::suite::standard(300);
    let calls = [
        json!({"name": "user_profile", "arguments": {}}),
        json!({"name": "user_history", "arguments": {"order": "highest_rated"}}),
        json!({"name": "similar_users", "arguments": {"k": 5, "only_candidates": true}}),
        json!({"name": "item_info", "arguments": {"candidate": 1}}),
        json!({"name": "item_relations", "arguments": {"candidate": 2}}),
        json!({"name": "rank_candidates", "arguments": {"by": "all"}}),
    ];
    for split in [datasets::Split::Train, datasets::Split::Test] {
        for e in w.data.episodes(split).iter().take(3) {
            let view = EpisodeView::new(w, e);
            for c in &calls {
                let _ = reg.call_text(w, &view, &c.to_string());
            }
        }
    }
}

#[test]
fn every_damaged_dataset_is_named_or_harmless() {
    let started = std::time::Instant::now();
    let dir = scratch();
    let good = dir.join("good.h5");
    write_store(&good);
    tools::world::load(&good).expect("the undamaged store loads");
    let mut names = Vec::new();
    datasets_of(&hdf5::File::open(&good).expect("open"), &mut names);
    names.sort();
    let bad = dir.join("bad.h5");
    let shown = bad.display().to_string();
    let (mut cases, mut refused) = (0, 0);
    let mut harmless = Vec::new();
    for name in &names {
        for damage in [
            Damage::Deleted,
            Damage::Halved,
            Damage::Emptied,
            Damage::OutOfRange,
            Damage::Retyped,
        ] {
            std::fs::copy(&good, &bad).expect("copy");
            apply(&bad, name, damage);
            cases += 1;
            match tools::world::load(&bad) {
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains(&shown), "{name} {damage:?}: {msg}");
                    // The damaged dataset, or the one it no longer agrees with, is named;
                    // a deleted model set is named by its group.
                    let group = name.split('/').nth(1).unwrap_or("");
                    assert!(
                        msg.contains(name.as_str())
                            || (damage != Damage::Deleted && msg.contains("dataset /"))
                            || (name.ends_with("/bpr/dim") && msg.contains(&format!("/{group}"))),
                        "{name} {damage:?} is not named: {msg}"
                    );
                    refused += 1;
                }
                Ok(w) => {
                    assert_ne!(
                        damage,
                        Damage::Deleted,
                        "{name} deleted and the store still loaded"
                    );
                    smoke(&w);
                    harmless.push(format!("{name} {damage:?}"));
                }
            }
        }
    }
    eprintln!(
        "corrupt_store: {} datasets x 5 damages = {cases} damaged stores: {refused} refused \
         naming the file and dataset, {} loaded with tools answering (harmless damage: {}) \
         in {:.1}s",
        names.len(),
        harmless.len(),
        harmless.join(", "),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
