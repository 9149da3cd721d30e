//! GRPO micro-batches: training each group on its shared prompt gives the same loss, logged
//! statistics and gradients as full rows, for every aggregation, with old-policy and
//! reference log-probs in play.

use testkit as support;

use rollout::AgentRow;
use support::*;
use tch::{Device, Kind, Tensor};
use trainer::algos::Aggregation;
use trainer::losses::GrpoLossConfig;
use trainer::rl_batch::{accumulate_gradients, micro_batches, Fixed, PassStats};

fn row(episode: usize, prompt: &[i64], rest: &[i64], rest_mask: &[u8]) -> AgentRow {
    AgentRow {
        episode,
        sample: 0,
        messages: Vec::new(),
        calls: Vec::new(),
        end: None,
        answer_text: None,
        prompt_tokens: prompt.len(),
        generated_tokens: 0,
        forced_tokens: 0,
        seconds: 0.0,
        ids: prompt.iter().chain(rest).copied().collect(),
        mask: std::iter::repeat_n(0u8, prompt.len())
            .chain(rest_mask.iter().copied())
            .collect(),
        logprobs: Vec::new(),
    }
}

fn pass(
    model: &lm::Model,
    rows: &[AgentRow],
    adv: &[Option<f64>],
    share: bool,
    cfg: &GrpoLossConfig,
) -> (PassStats, Vec<Tensor>, usize) {
    let micro = micro_batches(rows, adv, share, 2, false, Device::Cpu);
    // Old and reference log-probs: fixed shifts of the current ones, the same per token in
    // either layout, so the ratio and the KL term are not trivial.
    let fixed: Vec<Fixed> = micro
        .iter()
        .map(|mb| {
            let lp = tch::no_grad(|| mb.logprobs(model).dense);
            let m = mb.score_mask().to_kind(Kind::Float);
            Fixed {
                old: Some(&lp + &m * 0.1),
                reference: Some(&lp - &m * 0.2),
            }
        })
        .collect();
    for mut v in model.vs.trainable_variables() {
        v.zero_grad();
    }
    let stats = accumulate_gradients(model, &micro, &fixed, cfg, &Default::default());
    let grads = model
        .vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad().copy())
        .collect();
    (stats, grads, micro.len())
}

#[test]
fn shared_prompt_batches_train_like_full_rows() {
    let policy = lm::Policy::load(&tiny_model("qwen2"), Device::Cpu, Kind::Float).unwrap();
    let model = &policy.model;
    let (p0, p1) = ([5i64, 80, 900, 33, 7, 12], [40i64, 41, 42]);
    let rows = vec![
        row(0, &p0, &[1000, 4, 4, 61, 2], &[1, 1, 0, 1, 1]),
        row(0, &p0, &[17, 250], &[1, 1]),
        row(0, &p0, &[9, 9, 400], &[1, 0, 1]),
        // A zero-variance group: no advantage, not trained.
        row(1, &p1, &[3, 3], &[1, 1]),
        row(1, &p1, &[4, 4], &[1, 1]),
        row(2, &p1, &[300, 301, 302, 303], &[1, 1, 1, 1]),
        row(2, &p1, &[7], &[1]),
    ];
    let adv = [
        Some(1.2),
        Some(-0.4),
        Some(-0.8),
        None,
        None,
        Some(0.9),
        Some(-0.9),
    ];
    for aggregation in [
        Aggregation::TokenMean,
        Aggregation::SequenceMean,
        Aggregation::DrGrpo,
    ] {
        let cfg = GrpoLossConfig {
            beta: 0.05,
            aggregation,
            dr_grpo_length: 16.0,
            ..Default::default()
        };
        let (full, g_full, n_full) = pass(model, &rows, &adv, false, &cfg);
        let (shared, g_shared, n_shared) = pass(model, &rows, &adv, true, &cfg);
        assert_eq!((n_full, n_shared), (3, 2), "5 rows in pairs vs 2 groups");
        // Full rows are paired longest first (11+9, 8+7, 4 tokens): 39 real positions of 42
        // computed, where the episode order (11+8, 9+7, 4) computes 44.
        let pads: (usize, usize) = micro_batches(&rows, &adv, false, 2, false, Device::Cpu)
            .iter()
            .fold((0, 0), |a, mb| (a.0 + mb.positions.0, a.1 + mb.positions.1));
        assert_eq!(pads, (39, 42));
        for (a, b) in [
            (full.loss, shared.loss),
            (full.kl, shared.kl),
            (full.clip_fraction, shared.clip_fraction),
            (full.entropy, shared.entropy),
        ] {
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                "{aggregation:?}: {full:?} vs {shared:?}"
            );
        }
        assert!(full.kl > 0.0 && full.loss.abs() > 1e-6);
        let mut worst = 0.0f64;
        for (a, b) in g_full.iter().zip(&g_shared) {
            worst = worst.max(max_abs_diff(a, b) / (1e-3 + a.abs().max().double_value(&[])));
        }
        assert!(
            worst < 1e-4,
            "{aggregation:?}: relative gradient difference {worst}"
        );
    }
}
