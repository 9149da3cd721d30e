//! The generation engine against plain full-sequence forwards of the same model.

use testkit as support;

use lm::engine::{Engine, RowState, StopReason};
use lm::sampling::SamplingParams;
use lm::Policy;
use support::*;
use tch::{Device, Kind, Tensor};

fn policy() -> Policy {
    Policy::load(&tiny_model("llama"), Device::Cpu, Kind::Float).unwrap()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

/// log-softmax of a full causal forward over `ids`: [T, V].
fn full_logprobs(p: &Policy, ids: &[i64]) -> Tensor {
    tch::no_grad(|| p.model.forward(&Tensor::from_slice(ids).unsqueeze(0)))
        .squeeze_dim(0)
        .log_softmax(-1, Kind::Float)
}

fn prompts(p: &Policy) -> Vec<Vec<i64>> {
    [
        "Hello",
        "A much longer prompt with quite a few more tokens in it than the first one",
        "Rank these movies: Heat, Fargo, Casino",
    ]
    .iter()
    .map(|t| p.tokenizer.encode(t, true).unwrap())
    .collect()
}

/// Every sampled log-prob the cached engine recorded equals the full recomputation.
fn assert_matches_recompute(p: &Policy, engine: &Engine, row: usize) {
    let r = engine.row(row);
    assert_eq!(r.ids.len(), r.mask.len());
    assert_eq!(r.ids.len(), r.logprobs.len());
    let full = full_logprobs(p, &r.ids);
    for t in 1..r.ids.len() {
        if r.mask[t] == 1 {
            let want = full.double_value(&[t as i64 - 1, r.ids[t]]);
            assert!(
                (want - r.logprobs[t] as f64).abs() < 1e-4,
                "row {row} pos {t}: {want} vs {}",
                r.logprobs[t]
            );
        }
    }
    // The last full distribution too, over the whole vocabulary.
    let last = Tensor::from_slice(r.last_distribution.as_ref().unwrap());
    let want = full.get(r.ids.len() as i64 - 2);
    assert!(max_abs_diff(&last, &want) < 1e-4);
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let p = policy();
    let mut engine = Engine::new(&p.model, &p.tokenizer);
    engine.keep_distributions = true;
    let rows: Vec<usize> = prompts(&p)
        .iter()
        .map(|ids| engine.add_row(ids, greedy(24)).unwrap())
        .collect();
    engine.run().unwrap();
    for row in rows {
        assert_eq!(
            engine.row(row).state,
            RowState::Stopped(StopReason::MaxNewTokens)
        );
        assert_matches_recompute(&p, &engine, row);
    }
}

#[test]
fn batch_of_different_lengths_equals_each_row_alone() {
    let p = policy();
    let prompts = prompts(&p);
    // Different budgets, so rows finish (and are compacted away) at different steps.
    let budgets = [5, 30, 17];
    let mut batch = Engine::new(&p.model, &p.tokenizer);
    let rows: Vec<usize> = prompts
        .iter()
        .zip(budgets)
        .map(|(ids, n)| batch.add_row(ids, greedy(n)).unwrap())
        .collect();
    while batch.running() > 0 {
        for id in batch.step().unwrap() {
            batch.finish(id);
        }
    }
    for ((ids, n), row) in prompts.iter().zip(budgets).zip(rows) {
        let mut alone = Engine::new(&p.model, &p.tokenizer);
        let r = alone.add_row(ids, greedy(n)).unwrap();
        alone.run().unwrap();
        assert_eq!(batch.row(row).ids, alone.row(r).ids);
        for (a, b) in batch.row(row).logprobs.iter().zip(&alone.row(r).logprobs) {
            assert!((a - b).abs() < 1e-4);
        }
    }
}

#[test]
fn forced_tokens_act_as_if_they_were_in_the_prompt() {
    let p = policy();
    let prompt = p
        .tokenizer
        .encode("User history: Heat, Fargo.", true)
        .unwrap();
    let forced = p
        .tokenizer
        .encode("<tool_response>Casino (1995)</tool_response>", false)
        .unwrap();
    // Row A: generate, get forced tokens appended, generate again; B idles beside it.
    let mut engine = Engine::new(&p.model, &p.tokenizer);
    engine.keep_distributions = true;
    let a = engine.add_row(&prompt, greedy(6)).unwrap();
    let b = engine.add_row(&prompt[..3], greedy(40)).unwrap();
    let stopped = engine.step().unwrap();
    assert!(stopped.is_empty());
    while engine.row(a).state == RowState::Running {
        engine.step().unwrap();
    }
    engine.append_forced(a, &forced, Some(greedy(6))).unwrap();
    engine.run().unwrap();
    let row = engine.row(a);
    let first_turn = prompt.len() + 6;
    assert_eq!(row.ids.len(), first_turn + forced.len() + 6);
    assert_eq!(&row.ids[first_turn..first_turn + forced.len()], &forced[..]);
    let mask_ones: usize = row.mask.iter().map(|&m| m as usize).sum();
    assert_eq!(mask_ones, 12, "only sampled tokens carry mask 1");
    assert!(row.mask[first_turn..first_turn + forced.len()]
        .iter()
        .all(|&m| m == 0));
    assert_matches_recompute(&p, &engine, a);
    assert_matches_recompute(&p, &engine, b);

    // The same sequence given entirely as a prompt continues identically.
    let mut fresh = Engine::new(&p.model, &p.tokenizer);
    fresh.keep_distributions = true;
    let c = fresh
        .add_row(&row.ids[..first_turn + forced.len()], greedy(6))
        .unwrap();
    fresh.run().unwrap();
    assert_eq!(fresh.row(c).ids, row.ids);
}

#[test]
fn seeded_sampling_is_reproducible_and_batch_invariant() {
    let p = policy();
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        max_new_tokens: 20,
        seed,
        ignore_eos: true,
        ..Default::default()
    };
    let prompts = prompts(&p);
    let run = |ids: &[&Vec<i64>], seeds: &[u64]| {
        let mut e = Engine::new(&p.model, &p.tokenizer);
        let rows: Vec<usize> = ids
            .iter()
            .zip(seeds)
            .map(|(i, s)| e.add_row(i, params(*s)).unwrap())
            .collect();
        e.run().unwrap();
        rows.iter()
            .map(|&r| e.row(r).ids.clone())
            .collect::<Vec<_>>()
    };
    let batch = run(&[&prompts[0], &prompts[1], &prompts[0]], &[7, 7, 8]);
    let alone = run(&[&prompts[1]], &[7]);
    assert_eq!(batch[1], alone[0]);
    assert_eq!(
        batch,
        run(&[&prompts[0], &prompts[1], &prompts[0]], &[7, 7, 8])
    );
    assert_ne!(
        batch[0], batch[2],
        "different seeds should sample differently"
    );
}

#[test]
fn stop_strings_and_context_limit_end_a_turn() {
    let p = policy();
    let prompt = p.tokenizer.encode("Hello", true).unwrap();
    let mut e = Engine::new(&p.model, &p.tokenizer);
    let r = e.add_row(&prompt, greedy(30)).unwrap();
    e.run().unwrap();
    // Use the first generated piece of text as a stop string: a rerun must stop right there.
    let text = e.row(r).turn_text().to_string();
    let stop: String = text.chars().skip(3).take(4).collect();
    let mut e2 = Engine::new(&p.model, &p.tokenizer);
    let r2 = e2
        .add_row(
            &prompt,
            SamplingParams {
                stop: vec![stop.clone()],
                ..greedy(30)
            },
        )
        .unwrap();
    e2.run().unwrap();
    assert_eq!(
        e2.row(r2).state,
        RowState::Stopped(StopReason::StopString(stop.clone()))
    );
    assert!(e2.row(r2).turn_text().contains(&stop));
    assert!(e2.row(r2).ids.len() < e.row(r).ids.len());

    let mut e3 = Engine::new(&p.model, &p.tokenizer);
    e3.max_context = prompt.len() + 4;
    let r3 = e3.add_row(&prompt, greedy(30)).unwrap();
    e3.run().unwrap();
    assert_eq!(e3.row(r3).state, RowState::Stopped(StopReason::ContextFull));
    assert_eq!(e3.row(r3).ids.len(), prompt.len() + 4);
}

#[test]
fn bad_token_ids_are_errors_not_panics() {
    let p = policy();
    let mut e = Engine::new(&p.model, &p.tokenizer);
    assert!(e.add_row(&[], greedy(3)).is_err());
    let err = e.add_row(&[1, 999_999], greedy(3)).unwrap_err().to_string();
    assert!(err.contains("999999"), "{err}");
}

#[test]
fn rows_with_one_prompt_prefill_once_and_sample_as_if_alone() {
    let p = policy();
    let params = |seed| SamplingParams {
        temperature: 1.0,
        max_new_tokens: 12,
        seed,
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = &prompts(&p)[1];
    let mut e = Engine::new(&p.model, &p.tokenizer);
    e.keep_distributions = true;
    let rows: Vec<usize> = (0..4)
        .map(|s| e.add_row(prompt, params(s)).unwrap())
        .collect();
    // A different prompt in the same step still prefills on its own.
    let other = e.add_row(&prompts(&p)[2], params(9)).unwrap();
    e.run().unwrap();
    assert_eq!(e.fed_tokens_saved, 3 * prompt.len());
    for &r in rows.iter().chain([&other]) {
        assert_matches_recompute(&p, &e, r);
        // Each row samples exactly what it samples alone (same seed).
        let mut alone = Engine::new(&p.model, &p.tokenizer);
        let ids = e.row(r).ids[..if r == other {
            prompts(&p)[2].len()
        } else {
            prompt.len()
        }]
            .to_vec();
        let a = alone
            .add_row(&ids, params(if r == other { 9 } else { r as u64 }))
            .unwrap();
        alone.run().unwrap();
        assert_eq!(alone.row(a).ids, e.row(r).ids, "row {r}");
    }
    assert_ne!(e.row(rows[0]).ids, e.row(rows[1]).ids);
}

// ---- Prefix cache and rows admitted while others run -------------------------------------

/// A long shared head (a system prompt with tool schemas) and different tails.
fn shared_head_prompts(p: &Policy) -> Vec<Vec<i64>> {
    let head = "You are a recommendation agent. Tools: user_profile(), item_info(candidate), \
                similar_items(item, k), candidate_scores(model), history(n). Think, plan, act. "
        .repeat(4);
    [
        "User 12 watched Heat, Fargo. Rank: Casino, Ronin.",
        "User 7 watched Alien. Rank: Aliens, Predator, Heat.",
        "User 3 watched nothing yet. Rank: Babe.",
    ]
    .iter()
    .map(|tail| p.tokenizer.encode(&format!("{head}{tail}"), true).unwrap())
    .collect()
}

fn sampled(seed: u64, temperature: f64, n: usize) -> SamplingParams {
    SamplingParams {
        temperature,
        max_new_tokens: n,
        seed,
        ignore_eos: true,
        ..Default::default()
    }
}

fn common(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// (ids, log-probs) of each prompt run alone on a fresh engine without the prefix cache.
fn alone(p: &Policy, prompts: &[Vec<i64>], params: &[SamplingParams]) -> Vec<(Vec<i64>, Vec<f32>)> {
    prompts
        .iter()
        .zip(params)
        .map(|(ids, params)| {
            let mut e = Engine::new(&p.model, &p.tokenizer);
            e.prefix_cache = false;
            let r = e.add_row(ids, params.clone()).unwrap();
            e.run().unwrap();
            assert_eq!(e.fed_tokens_saved, 0);
            (e.row(r).ids.clone(), e.row(r).logprobs.clone())
        })
        .collect()
}

/// Same tokens, log-probs within `tol`. Rows computed alone (decode matmuls of one row) agree
/// with the prefix cache on and off to ~3e-6 in f32; a row in a batch differs from itself
/// alone by up to ~6e-5 whatever the cache (the matmuls' shapes change with the batch), hence
/// two tolerances.
fn assert_same_row(got: (&[i64], &[f32]), want: &(Vec<i64>, Vec<f32>), tol: f32, what: &str) {
    assert_eq!(got.0, &want.0[..], "{what}: tokens differ");
    let worst = got
        .1
        .iter()
        .zip(&want.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{what}: max |dlogprob| {worst:e}");
    for (t, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
        assert!((a - b).abs() < tol, "{what} pos {t}: {a} vs {b}");
    }
}

/// Rows admitted together share the head: the first prefills it, the others wait one step
/// and copy it; greedy and sampled rows give the tokens and log-probs of each row alone.
#[test]
fn prefix_cache_shares_a_head_among_rows_admitted_together() {
    for family in ["qwen2", "llama"] {
        let p = Policy::load(&tiny_model(family), Device::Cpu, Kind::Float).unwrap();
        let prompts = shared_head_prompts(&p);
        assert!(
            common(&prompts[0], &prompts[1]) > 150,
            "the head must be long"
        );
        for temperature in [0.0, 0.8] {
            let params: Vec<SamplingParams> = (0..3)
                .map(|s| sampled(s as u64 + 5, temperature, 10 + 4 * s))
                .collect();
            let want = alone(&p, &prompts, &params);
            let mut e = Engine::new(&p.model, &p.tokenizer);
            let rows: Vec<usize> = prompts
                .iter()
                .zip(&params)
                .map(|(ids, pr)| e.add_row(ids, pr.clone()).unwrap())
                .collect();
            e.run().unwrap();
            // Rows 1 and 2 copied the longest prefix row 0 (already prefilled) holds.
            let expect: usize = [1, 2]
                .iter()
                .map(|&k| common(&prompts[0], &prompts[k]).min(prompts[k].len() - 1))
                .sum();
            assert_eq!(e.prefix_tokens_reused, expect, "{family}");
            assert_eq!(e.fed_tokens_saved, expect);
            let total: usize = prompts.iter().map(Vec::len).sum();
            assert_eq!(e.prefilled_tokens, total - expect);
            for (k, &r) in rows.iter().enumerate() {
                let row = e.row(r);
                assert_same_row(
                    (&row.ids, &row.logprobs),
                    &want[k],
                    1e-4,
                    &format!("{family} t={temperature} row {k}"),
                );
            }
        }
    }
}

/// A row added while others are mid-generation reuses a live row's prompt *and* generated
/// tokens (an earlier turn), and a row added after every other finished reuses a stored
/// prefix; both continue exactly as alone. Without the cache nothing is shared.
#[test]
fn prefix_cache_reuses_live_rows_and_stored_prefixes() {
    for (family, temperature) in [("qwen2", 0.0), ("llama", 0.9)] {
        let p = Policy::load(&tiny_model(family), Device::Cpu, Kind::Float).unwrap();
        let prompts = shared_head_prompts(&p);
        let params = |seed| sampled(seed, temperature, 8);
        for cache in [true, false] {
            let what = format!("{family} t={temperature} cache={cache}");
            let mut e = Engine::new(&p.model, &p.tokenizer);
            e.prefix_cache = cache;
            let a = e.add_row(&prompts[0], params(1)).unwrap();
            e.run().unwrap();
            // A later turn of A's conversation: its whole record plus a tool response.
            let forced = p
                .tokenizer
                .encode("<tool_response>Casino (1995)</tool_response>", false)
                .unwrap();
            let mut turn2 = e.row(a).ids.clone();
            turn2.extend(&forced);
            let b = e.add_row(&turn2, params(2)).unwrap();
            e.run().unwrap();
            let reused_live = e.prefix_tokens_reused;
            e.finish(a);
            e.finish(b);
            // Episodes one after another: each reuses the head from a stored prefix.
            let mut later = Vec::new();
            for (k, prompt) in prompts.iter().enumerate().skip(1) {
                let c = e.add_row(prompt, params(3 + k as u64)).unwrap();
                e.run().unwrap();
                e.finish(c);
                later.push(c);
            }
            let reused_stored = e.prefix_tokens_reused - reused_live;
            let want = alone(
                &p,
                &[turn2.clone(), prompts[1].clone(), prompts[2].clone()],
                &[params(2), params(4), params(5)],
            );
            let row = e.row(b);
            assert_same_row((&row.ids, &row.logprobs), &want[0], 1e-5, &what);
            for (k, &c) in later.iter().enumerate() {
                let row = e.row(c);
                assert_same_row((&row.ids, &row.logprobs), &want[k + 1], 1e-5, &what);
            }
            if cache {
                // A's cache held everything but its last sampled token.
                assert_eq!(reused_live, prompts[0].len() + 8 - 1);
                let head = common(&prompts[0], &prompts[1]);
                let head2 = common(&prompts[1], &prompts[2]).max(common(&prompts[0], &prompts[2]));
                assert_eq!(reused_stored, head + head2, "{what}");
                // Two slots: later rows took stored slots instead of growing the cache.
                assert!(e.cache_slots() <= 2, "{} slots", e.cache_slots());
            } else {
                assert_eq!(e.fed_tokens_saved, 0);
            }
        }
    }
}

/// Rows admitted one by one while earlier ones are still generating (continuous batching at
/// the engine level), with varying budgets and slots freed as rows finish, give each row's
/// tokens and log-probs alone.
#[test]
fn rows_admitted_mid_run_equal_each_row_alone() {
    let p = Policy::load(&tiny_model("llama"), Device::Cpu, Kind::Float).unwrap();
    let mut prompts = shared_head_prompts(&p);
    prompts.extend(self::prompts(&p));
    let params: Vec<SamplingParams> = (0..prompts.len())
        .map(|k| sampled(k as u64, if k % 2 == 0 { 0.0 } else { 0.7 }, 6 + 5 * k))
        .collect();
    let want = alone(&p, &prompts, &params);
    let mut e = Engine::new(&p.model, &p.tokenizer);
    let mut ids = Vec::new();
    let mut next = 0;
    // At most two rows in flight: a new one is admitted as soon as one finishes.
    while next < prompts.len() || e.running() > 0 {
        while e.running() < 2 && next < prompts.len() {
            ids.push(e.add_row(&prompts[next], params[next].clone()).unwrap());
            next += 1;
        }
        for r in e.step().unwrap() {
            e.finish(r);
        }
    }
    assert!(e.cache_slots() <= 2 + 4, "slots stay bounded");
    assert!(e.prefix_tokens_reused > 0);
    for (k, &r) in ids.iter().enumerate() {
        assert_same_row(
            (&e.row(r).ids, &e.row(r).logprobs),
            &want[k],
            1e-4,
            &format!("row {k}"),
        );
    }
}

/// Keys/values computed with old weights are never reused: a weight change while the engine
/// holds a cache is an error, not silently stale output.
#[test]
fn engine_refuses_to_run_after_a_weight_change() {
    let p = Policy::load(&tiny_model("llama"), Device::Cpu, Kind::Float).unwrap();
    let prompt = &prompts(&p)[1];
    let mut e = Engine::new(&p.model, &p.tokenizer);
    let r = e.add_row(prompt, greedy(3)).unwrap();
    e.step().unwrap();
    tch::no_grad(|| {
        for (_, mut t) in p.model.vs.variables() {
            let _ = t.f_add_scalar_(1e-3).unwrap();
        }
    });
    let err = e.step().unwrap_err().to_string();
    assert!(err.contains("weights changed"), "{err}");
    assert_eq!(e.row(r).state, RowState::Running);
}

/// Decode steps of some of the slots (others prefilling, finished, or stored prefixes)
/// attend on the whole cache in place (`in_place_decode`, the default) or on a gathered copy
/// of their rows: the same tokens, log-probs within 1e-5, and the in-place run does take
/// that path (rows admitted mid-run, stored prefixes in the cache).
#[test]
fn in_place_decode_equals_gathered_rows() {
    let p = Policy::load(&tiny_model("qwen2"), Device::Cpu, Kind::Float).unwrap();
    let mut prompts = shared_head_prompts(&p);
    prompts.extend(self::prompts(&p));
    let params: Vec<SamplingParams> = (0..prompts.len())
        .map(|k| sampled(k as u64, if k % 2 == 0 { 0.0 } else { 0.9 }, 5 + 4 * k))
        .collect();
    let run = |in_place: bool| {
        let mut e = Engine::new(&p.model, &p.tokenizer);
        e.in_place_decode = in_place;
        let (mut ids, mut next) = (Vec::new(), 0);
        while next < prompts.len() || e.running() > 0 {
            // Three rows in flight; a new one prefills while the others decode.
            while e.running() < 3 && next < prompts.len() {
                ids.push(e.add_row(&prompts[next], params[next].clone()).unwrap());
                next += 1;
            }
            for r in e.step().unwrap() {
                e.finish(r);
            }
        }
        let rows: Vec<(Vec<i64>, Vec<f32>)> = ids
            .iter()
            .map(|&r| (e.row(r).ids.clone(), e.row(r).logprobs.clone()))
            .collect();
        (rows, e.in_place_forwards)
    };
    let (gathered, none) = run(false);
    let (in_place, forwards) = run(true);
    assert_eq!(none, 0);
    assert!(forwards > 5, "{forwards} in-place decode forwards");
    for (k, (got, want)) in in_place.iter().zip(&gathered).enumerate() {
        assert_same_row((&got.0, &got.1), want, 1e-5, &format!("row {k}"));
    }
}
