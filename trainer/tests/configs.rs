//! Every example config under configs/ parses with the keys the trainer knows (they are
//! `deny_unknown_fields`, so a renamed key breaks this test, not a user's run).

use std::path::Path;

#[test]
fn example_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("results")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    let mut seen = [0usize; 3];
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("synth") {
            trainer::config::load::<trainer::synth::SynthConfig>(path).unwrap();
            seen[0] += 1;
        } else if name.starts_with("sft") {
            trainer::config::load::<trainer::sft::SftConfig>(path).unwrap();
            seen[1] += 1;
        } else if name.starts_with("rl") {
            trainer::config::load::<trainer::rl::RlConfig>(path).unwrap();
            seen[2] += 1;
        } else {
            panic!("{name}: name it synth*, sft* or rl* so this test knows its type");
        }
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?} in {files:?}");
}
