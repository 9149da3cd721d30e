//! Every example config under configs/ parses with the keys the trainer knows (they are
//! `deny_unknown_fields`, so a renamed key breaks this test, not a user's run).

use std::path::Path;

#[test]
fn example_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files = Vec::new();
    for dir in [
        root.clone(),
        root.join("results"),
        root.join("results/explore"),
    ] {
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

// ---------------------------------------------------------------------------------------
// Wrong types and wrong values (issue 14): every key of the synth, SFT and RL configs with a
// value of another type, every key that must be present removed, and the values each key
// refuses, loaded through `config::load`: an error naming the file and the key (dotted from
// the file's root, `agent.top_p`), never a config that starts a run.

use toml::{Table, Value};

/// Every optional table present, so that every key exists (the walk below finds them).
const SYNTH: &str = r#"
data = "d.h5"
out = "o.jsonl"
limit_episodes = 5
[agent]
max_turns = 3
[model]
dir = "m"
[openai]
base_url = "http://localhost:8000/v1"
model = "m"
"#;

const SFT: &str = r#"
run_dir = "r"
model = "m"
train_file = "t.jsonl"
steps = 2
eval_every = 1
eval_data = "d.h5"
[lora]
rank = 4
"#;

const RL: &str = r#"
run_dir = "r"
model = "m"
data = "d.h5"
steps = 2
[lora]
rank = 4
"#;

#[derive(Clone, Copy)]
enum Kind {
    Synth,
    Sft,
    Rl,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Loads `text` as a config of `kind`: the error message, if any.
fn load_err(kind: Kind, dir: &Path, text: &str) -> Option<String> {
    let p = write(dir, "case.toml", text);
    let r = match kind {
        Kind::Synth => trainer::config::load::<trainer::synth::SynthConfig>(&p).map(|_| ()),
        Kind::Sft => trainer::config::load::<trainer::sft::SftConfig>(&p).map(|_| ()),
        Kind::Rl => trainer::config::load::<trainer::rl::RlConfig>(&p).map(|_| ()),
    };
    r.err().map(|e| format!("{e:#}"))
}

/// The config of `kind` with every default filled in, as a TOML table (the resolved config
/// a run writes): the full set of keys.
fn resolved(kind: Kind, dir: &Path) -> Table {
    let base = match kind {
        Kind::Synth => SYNTH,
        Kind::Sft => SFT,
        Kind::Rl => RL,
    };
    let p = write(dir, "base.toml", base);
    let text = match kind {
        Kind::Synth => toml::to_string(
            &trainer::config::load::<trainer::synth::SynthConfig>(&p).expect("base synth"),
        ),
        Kind::Sft => toml::to_string(
            &trainer::config::load::<trainer::sft::SftConfig>(&p).expect("base sft"),
        ),
        Kind::Rl => {
            toml::to_string(&trainer::config::load::<trainer::rl::RlConfig>(&p).expect("base rl"))
        }
    }
    .expect("serializing a config");
    text.parse().expect("a resolved config parses")
}

/// Every leaf key of a table, dotted.
fn leaves(t: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(sub) => leaves(sub, &key, out),
            _ => out.push(key),
        }
    }
}

fn get_mut<'t>(t: &'t mut Table, key: &str) -> (&'t mut Table, String) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().unwrap().to_string();
    let mut t = t;
    for p in parts {
        t = t.get_mut(p).and_then(Value::as_table_mut).unwrap();
    }
    (t, leaf)
}

fn with(base: &Table, key: &str, value: Option<Value>) -> String {
    let mut t = base.clone();
    let (table, leaf) = get_mut(&mut t, key);
    match value {
        Some(v) => {
            table.insert(leaf, v);
        }
        None => {
            table.remove(&leaf);
        }
    }
    toml::to_string(&t).unwrap()
}

/// Values of other types than `v` (and, for integers, ones no unsigned key holds).
fn wrong_types(v: &Value) -> Vec<Value> {
    let s = Value::String("seven".into());
    match v {
        Value::String(_) => vec![
            Value::Integer(7),
            Value::Array(vec![]),
            Value::Boolean(true),
        ],
        Value::Integer(_) => vec![
            s,
            Value::Float(1.5),
            Value::Boolean(true),
            Value::Integer(-1),
        ],
        Value::Float(_) => vec![
            s,
            Value::Boolean(false),
            Value::Array(vec![Value::Float(1.0)]),
        ],
        Value::Boolean(_) => vec![s, Value::Integer(1)],
        Value::Array(_) => vec![Value::Integer(3), Value::Array(vec![Value::Integer(1)])],
        _ => vec![s],
    }
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-scratch")
        .join(format!("configs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The message names the file and `key` (dotted, or its last part inside the TOML snippet).
fn assert_names(msg: &str, file: &Path, key: &str, what: &str) {
    let last = key.rsplit('.').next().unwrap();
    assert!(
        msg.contains(&file.display().to_string()),
        "{what}: the file is not named: {msg}"
    );
    assert!(
        msg.contains(&format!("`{key}`")) || msg.contains(&format!("`{last}`")),
        "{what}: `{key}` is not named: {msg}"
    );
}

#[test]
fn every_key_with_a_wrong_type_or_missing_is_named() {
    let dir = scratch_dir("types");
    let case = dir.join("case.toml");
    let mut cases = 0;
    for (kind, name) in [(Kind::Synth, "synth"), (Kind::Sft, "sft"), (Kind::Rl, "rl")] {
        let base = resolved(kind, &dir);
        assert_eq!(load_err(kind, &dir, &toml::to_string(&base).unwrap()), None);
        let mut keys = Vec::new();
        leaves(&base, "", &mut keys);
        assert!(keys.len() > 20, "{name}: {keys:?}");
        for key in &keys {
            let (t, leaf) = {
                let mut b = base.clone();
                let (t, leaf) = get_mut(&mut b, key);
                (t.clone(), leaf)
            };
            for v in wrong_types(&t[&leaf]) {
                // Some keys accept another type as a value (an integer where a float is
                // expected): those must load or be refused naming the key.
                let text = with(&base, key, Some(v.clone()));
                match load_err(kind, &dir, &text) {
                    Some(msg) => {
                        if key == "agent.max_turns" && cases % 7 == 0 {
                            eprintln!("configs: for example {name} {key} = {v}:\n{msg}");
                        }
                        assert_names(&msg, &case, key, &format!("{name} {key} = {v}"))
                    }
                    None => assert!(
                        matches!((&t[&leaf], &v), (Value::Float(_), Value::Integer(_))),
                        "{name}: {key} = {v} was accepted"
                    ),
                }
                cases += 1;
            }
            // Removed: a default applies, or the error names the missing key.
            if let Some(msg) = load_err(kind, &dir, &with(&base, key, None)) {
                assert_names(&msg, &case, key, &format!("{name} without {key}"));
            }
            cases += 1;
        }
        // A table given as a value, an unknown key inside a table and at the top.
        for (key, v) in [
            ("agent", Value::Integer(5)),
            ("optim.learning_rate", Value::Float(0.1)),
            ("colour", Value::String("red".into())),
        ] {
            let b = base.clone();
            if key == "optim.learning_rate" && b.get("optim").is_none() {
                continue;
            }
            let text = with(&b, key, Some(v.clone()));
            let msg = load_err(kind, &dir, &text)
                .unwrap_or_else(|| panic!("{name}: {key} = {v} was accepted"));
            assert_names(&msg, &case, key, &format!("{name} {key}"));
            cases += 1;
        }
    }
    eprintln!(
        "configs: {cases} configs with a key of the wrong type, missing or unknown: each named"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_out_of_domain_value_is_named() {
    let dir = scratch_dir("values");
    let case = dir.join("case.toml");
    let s = |x: &str| Value::String(x.into());
    let i = Value::Integer;
    let f = Value::Float;
    let agent = |t: &str| {
        vec![
            (format!("{t}.max_new_tokens"), i(0)),
            (format!("{t}.max_context"), i(1)),
            (format!("{t}.tool_max_chars"), i(0)),
            (format!("{t}.temperature"), f(-0.5)),
            (format!("{t}.temperature"), f(f64::NAN)),
            (format!("{t}.top_p"), f(0.0)),
            (format!("{t}.top_p"), f(1.5)),
        ]
    };
    let lora_optim = || {
        vec![
            ("lora.rank".to_string(), i(0)),
            ("lora.alpha".into(), f(0.0)),
            ("lora.alpha".into(), f(f64::INFINITY)),
            ("lora.target_modules".into(), Value::Array(vec![])),
            ("lora.target_modules".into(), Value::Array(vec![s("attn")])),
            ("optim.lr".into(), f(0.0)),
            ("optim.lr".into(), f(f64::NAN)),
            ("optim.weight_decay".into(), f(-0.1)),
            ("optim.beta1".into(), f(1.0)),
            ("optim.beta2".into(), f(-0.1)),
            ("optim.eps".into(), f(0.0)),
            ("optim.min_lr_ratio".into(), f(1.5)),
            ("optim.max_grad_norm".into(), f(-1.0)),
            ("optim.nonfinite".into(), s("ignore")),
        ]
    };
    let mut synth: Vec<(String, Value)> = vec![
        ("teacher".into(), s("gpt")),
        ("split".into(), s("training")),
        ("prefer".into(), s("best")),
        ("limit_episodes".into(), i(0)),
        ("min_ndcg".into(), f(1.5)),
        ("min_ndcg".into(), f(-0.1)),
        ("min_ndcg".into(), f(f64::NAN)),
        ("model.samples".into(), i(0)),
        ("model.batch".into(), i(0)),
        ("model.device".into(), s("tpu")),
        ("model.dtype".into(), s("f64")),
        ("openai.base_url".into(), s("localhost:8000/v1")),
        ("openai.model".into(), s(" ")),
        ("openai.samples".into(), i(0)),
        ("openai.temperature".into(), f(-1.0)),
        ("openai.max_tokens".into(), i(0)),
        ("openai.timeout_s".into(), f(0.0)),
        ("openai.backoff_s".into(), f(-1.0)),
        ("openai.concurrency".into(), i(0)),
    ];
    synth.extend(agent("agent"));
    let mut sft: Vec<(String, Value)> = vec![
        ("device".into(), s("gpu")),
        ("device".into(), s("cuda:x")),
        ("dtype".into(), s("f64")),
        ("steps".into(), i(0)),
        ("batch_size".into(), i(0)),
        ("micro_batch".into(), i(0)),
        ("max_len".into(), i(1)),
        ("save_every".into(), i(0)),
        ("eval_users".into(), i(0)),
    ];
    sft.extend(agent("eval_agent"));
    sft.extend(lora_optim());
    let mut rl: Vec<(String, Value)> = vec![
        ("device".into(), s("cuda:")),
        ("dtype".into(), s("int8")),
        ("steps".into(), i(0)),
        ("episodes_per_step".into(), i(0)),
        ("group_size".into(), i(1)),
        ("inner_epochs".into(), i(0)),
        ("micro_batch".into(), i(0)),
        ("save_every".into(), i(0)),
        ("eval_users".into(), i(0)),
        ("advantage".into(), s("zscore")),
        ("loss.aggregation".into(), s("mean")),
        ("loss.eps_low".into(), f(1.0)),
        ("loss.eps_high".into(), f(-0.1)),
        ("loss.beta".into(), f(-1.0)),
        ("loss.dr_grpo_length".into(), f(0.0)),
        ("reward.lambda".into(), f(1.5)),
        ("reward.c".into(), f(-1.0)),
        ("reward.mu".into(), f(-0.05)),
        ("reward.k".into(), i(0)),
        ("mu".into(), i(2)),
    ];
    rl.extend(agent("agent"));
    rl.extend(agent("eval_agent"));
    rl.extend(lora_optim());
    let mut cases = 0;
    for (kind, name, values) in [
        (Kind::Synth, "synth", synth),
        (Kind::Sft, "sft", sft),
        (Kind::Rl, "rl", rl),
    ] {
        let base = resolved(kind, &dir);
        for (key, v) in values {
            let msg = load_err(kind, &dir, &with(&base, &key, Some(v.clone())))
                .unwrap_or_else(|| panic!("{name}: {key} = {v} was accepted"));
            assert_names(&msg, &case, &key, &format!("{name} {key} = {v}"));
            if key == "agent.top_p" && name == "synth" {
                eprintln!("configs: for example {name} {key} = {v}: {msg}");
            }
            cases += 1;
        }
    }
    // Exploring the evidence presets is the scripted teacher's.
    let mut base = resolved(Kind::Synth, &dir);
    base.insert("teacher".into(), s("openai"));
    let msg = load_err(
        Kind::Synth,
        &dir,
        &with(&base, "explore_presets", Some(Value::Boolean(true))),
    )
    .expect("explore_presets with the openai teacher was accepted");
    assert_names(
        &msg,
        &case,
        "explore_presets",
        "explore_presets, teacher openai",
    );
    cases += 1;
    // Validation needs its data.
    let base = resolved(Kind::Sft, &dir);
    let msg = load_err(Kind::Sft, &dir, &with(&base, "eval_data", None)).expect("accepted");
    assert_names(&msg, &case, "eval_every", "eval_every without eval_data");
    cases += 1;
    eprintln!("configs: {cases} configs with a value out of its domain: each named");
    let _ = std::fs::remove_dir_all(&dir);
}
