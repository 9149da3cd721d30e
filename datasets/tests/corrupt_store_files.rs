//! The HDF5 store against damage: files truncated, from another program or schema version,
//! and writers that fail half way. Each must end in an error naming the store (and its
//! attribute), never a panic; a failed write leaves nothing behind. Split from
//! `corrupt_inputs.rs` (the raw readers); fixtures in `corrupt/mod.rs`.

mod corrupt;

use corrupt::*;
use datasets::store::{read_prepared, write_prepared, Reader, Writer};
use datasets::{prepare, read_raw, PrepareConfig, Prepared};
use std::path::Path;

/// `tag` names the scratch copy of the source files: tests run in parallel, and two of
/// them sharing one directory delete it under each other.
fn small_prepared(tag: &str) -> Prepared {
    let fx = fixtures();
    let w = Written::new(&fx[1], &format!("{tag}-src"));
    let raw = read_raw("ml-100k", Some(&w.dir)).expect("the GroupLens fixture reads");
    prepare(
        &raw,
        &PrepareConfig {
            subset_users: 3,
            ..PrepareConfig::new("ml-100k", 1)
        },
    )
    .expect("the GroupLens fixture prepares")
}

fn write_store(path: &Path, p: &Prepared) {
    let w = Writer::create(path).expect("creating a store");
    write_prepared(&w, p).expect("writing a store");
    w.finish().expect("finishing a store");
}

fn open_and_read(path: &Path) -> anyhow::Result<Prepared> {
    read_prepared(&Reader::open(path)?)
}

/// Files in `dir` other than `keep`.
fn strays(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("listing")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn damaged_and_foreign_stores_are_refused_naming_the_file() {
    let started = std::time::Instant::now();
    let dir = scratch("store");
    let p = small_prepared("store");
    let good = dir.join("good.h5");
    write_store(&good, &p);
    assert_eq!(open_and_read(&good).expect("a good store reads"), p);
    let bytes = std::fs::read(&good).expect("reading the store");
    let bad = dir.join("bad.h5");
    let shown = bad.display().to_string();
    let mut cases = 0;
    let refuse = |bytes: &[u8], what: &str| -> String {
        std::fs::write(&bad, bytes).expect("writing");
        let msg = match open_and_read(&bad) {
            Ok(_) => panic!("{what} was read as a store"),
            Err(e) => format!("{e:#}"),
        };
        assert!(msg.contains(&shown), "{what}: {msg}");
        msg
    };
    // Truncated anywhere: HDF5 finds its superblock or tables cut short.
    let step = (bytes.len() / 400).max(1);
    for cut in (0..bytes.len()).step_by(step) {
        refuse(&bytes[..cut], &format!("cut at {cut} of {}", bytes.len()));
        cases += 1;
    }
    // Not HDF5: empty, text, JSON lines, another binary format.
    for (what, b) in [
        ("an empty file", Vec::new()),
        ("a ratings file", b"1\t2\t3\t4\n".to_vec()),
        ("JSON", b"{\"schema_version\": 2}".to_vec()),
        (
            "safetensors",
            [&8u64.to_le_bytes()[..], b"{}      "].concat(),
        ),
        ("zeros", vec![0u8; 4096]),
    ] {
        refuse(&b, what);
        cases += 1;
    }
    // HDF5 from another program or another schema version.
    let h5 = |attrs: &[(&str, &str)], with_data: bool| {
        let _ = std::fs::remove_file(&bad);
        if with_data {
            std::fs::copy(&good, &bad).expect("copy");
        }
        let f = if with_data {
            hdf5::File::open_rw(&bad)
        } else {
            hdf5::File::create(&bad)
        }
        .expect("hdf5");
        if !with_data {
            f.new_dataset_builder()
                .with_data(&[1.0f64, 2.0])
                .create("data")
                .expect("dataset");
        }
        for (name, value) in attrs {
            if f.attr(name).is_ok() {
                f.delete_attr(name).expect("delete attr");
            }
            if !value.is_empty() {
                let v: hdf5::types::VarLenUnicode = value.parse().expect("unicode");
                f.new_attr::<hdf5::types::VarLenUnicode>()
                    .create(*name)
                    .and_then(|a| a.write_scalar(&v))
                    .expect("attr");
            }
        }
    };
    for (what, attrs, with_data, expect) in [
        ("another program's HDF5", vec![], false, "schema_version"),
        (
            "schema version 1",
            vec![("schema_version", "1")],
            true,
            "schema version 1",
        ),
        (
            "schema version 3",
            vec![("schema_version", "3")],
            true,
            "schema version 3",
        ),
        (
            "schema version `two`",
            vec![("schema_version", "two")],
            true,
            "schema_version",
        ),
        (
            "no schema version",
            vec![("schema_version", "")],
            true,
            "schema_version",
        ),
        ("no config", vec![("config", "")], true, "config"),
        (
            "a garbled config",
            vec![("config", "{\"dataset\": 5")],
            true,
            "config",
        ),
        (
            "a config with 0 candidates",
            vec![(
                "config",
                &serde_json::to_string(&PrepareConfig {
                    candidates: 0,
                    ..p.config.clone()
                })
                .expect("json") as &str,
            )],
            true,
            "candidates",
        ),
    ] {
        h5(&attrs, with_data);
        let msg = match open_and_read(&bad) {
            Ok(_) => panic!("{what} was read as a store"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            msg.contains(&shown) && msg.contains(expect),
            "{what}: {msg}"
        );
        cases += 1;
    }
    assert!(strays(&dir, &["good.h5", "bad.h5"]).is_empty());
    eprintln!(
        "corrupt_store_files: {cases} damaged or foreign stores refused naming the file in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A store write that fails half way (an error before `finish`) leaves neither the output
/// nor a temporary file; an older store at the output path stays as it was.
#[test]
fn a_failed_store_write_leaves_nothing_behind() {
    let dir = scratch("writer");
    let p = small_prepared("writer");
    let out = dir.join("out.h5");
    {
        let w = Writer::create(&out).expect("create");
        write_prepared(&w, &p).expect("write");
        // Writing a dataset twice fails, as a real write error would, and the writer is
        // dropped with the error.
        assert!(w.put("events/item", &[1u32]).is_err());
    }
    assert!(
        strays(&dir, &[]).is_empty(),
        "left: {:?}",
        strays(&dir, &[])
    );
    // Over an existing store: the old one stays readable and unchanged.
    write_store(&out, &p);
    let before = std::fs::read(&out).expect("read");
    {
        let w = Writer::create(&out).expect("create");
        w.put_attr("schema_version", "2").expect("attr");
    }
    assert_eq!(std::fs::read(&out).expect("read"), before);
    assert_eq!(open_and_read(&out).expect("still a store"), p);
    assert_eq!(strays(&dir, &["out.h5"]), Vec::<String>::new());
    eprintln!("corrupt_store_files: 2 interrupted store writes left nothing behind");
}
