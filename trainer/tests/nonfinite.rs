//! A NaN/inf loss or gradient stops the run naming the step and the tensor, or (`[optim]
//! nonfinite = "skip"`) skips the step, counted, weights unchanged. Injected through the
//! test-only `RECTHINKER_DEBUG_NONFINITE` (trainer/src/train_common.rs).

mod fault_kit;

use fault_kit::*;
use testkit::scratch;

fn nonfinite_env(spec: &str) -> [(&str, &str); 1] {
    [("RECTHINKER_DEBUG_NONFINITE", spec)]
}

#[test]
fn sft_nonfinite_steps_stop_naming_the_tensor_or_are_skipped() {
    let dir = scratch("faults-nan-sft");
    // Default: stop, naming the step and the tensor, before the optimizer step.
    let stop = sft_config(&dir, "stop", true, 4, "");
    let e = failed(run("sft", &stop, &[], &nonfinite_env("loss@3")));
    assert!(
        e.contains("step 3: the loss is NaN; stopped before the optimizer step"),
        "{e}"
    );
    let rs = dir.join("stop");
    assert_eq!(steps_logged(&rs), [1, 2]);
    assert!(ck(&rs, 2).exists() && !ck(&rs, 3).exists());
    let e = failed(run("sft", &stop, &[], &nonfinite_env("grad@2")));
    assert!(
        e.contains("step 2: the gradient of `model.layers.0.self_attn.q_proj.lora_A.weight` holds NaN or infinite values"),
        "{e}"
    );
    eprintln!("faults: SFT stopped with: {}", error_line(&e));
    // skip: steps 2 (loss) and 3 (gradient) are skipped and counted; weights unchanged.
    let skip = sft_config(&dir, "skip", true, 5, "nonfinite = \"skip\"");
    let e = ok(run("sft", &skip, &[], &nonfinite_env("loss@2,grad@3")));
    assert!(
        e.contains("warning: step 2: the loss is NaN; step skipped"),
        "{e}"
    );
    assert!(e.contains("(2 skipped so far)"), "{e}");
    let r = dir.join("skip");
    let m = metrics(&r);
    let counts: Vec<u64> = m
        .iter()
        .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [0, 1, 2, 2, 2]);
    assert!(
        m[1]["loss"].is_null() && m[1]["grad_norm"].is_null(),
        "{m:?}"
    );
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&r, 1).join(f), &ck(&r, 2).join(f)),
            "{f}: step 2"
        );
        assert!(
            same_tensors(&ck(&r, 2).join(f), &ck(&r, 3).join(f)),
            "{f}: step 3"
        );
        assert!(
            !same_tensors(&ck(&r, 3).join(f), &ck(&r, 4).join(f)),
            "{f}: step 4 trains"
        );
    }
    // A bad value of the variable is named.
    let e = failed(run("sft", &skip, &[], &nonfinite_env("nan@2")));
    assert!(e.contains("RECTHINKER_DEBUG_NONFINITE: `nan@2`"), "{e}");
}

#[test]
fn grpo_nonfinite_steps_stop_naming_the_tensor_or_are_skipped() {
    let dir = scratch("faults-nan-grpo");
    let stop = grpo_config(&dir, "stop", 3, 0, "");
    let e = failed(run("rl", &stop, &[], &nonfinite_env("grad@2")));
    assert!(
        e.contains("step 2: the gradient of `lm_head.weight` holds NaN or infinite values; stopped before the optimizer step"),
        "{e}"
    );
    eprintln!("faults: GRPO stopped with: {}", error_line(&e));
    let rs = dir.join("stop");
    assert_eq!(steps_logged(&rs), [1]);
    assert!(ck(&rs, 1).exists() && !ck(&rs, 2).exists());
    let skip = grpo_config(&dir, "skip", 3, 0, "nonfinite = \"skip\"");
    let e = ok(run("rl", &skip, &[], &nonfinite_env("loss@2")));
    assert!(
        e.contains("warning: step 2: the loss is NaN; step skipped"),
        "{e}"
    );
    let r = dir.join("skip");
    let m = metrics(&r);
    let counts: Vec<u64> = m
        .iter()
        .map(|l| l["skipped_nonfinite"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [0, 1, 1]);
    for f in ["weights.safetensors", "optimizer.safetensors"] {
        assert!(
            same_tensors(&ck(&r, 1).join(f), &ck(&r, 2).join(f)),
            "{f}: step 2"
        );
        assert!(
            !same_tensors(&ck(&r, 2).join(f), &ck(&r, 3).join(f)),
            "{f}: step 3 trains"
        );
    }
}
