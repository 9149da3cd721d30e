//! Model output is hostile input, for the protocol: property-based tests (proptest) feed
//! `protocol::{classify, parse_answer, normalize_turn, ...}` arbitrary text: truncated and
//! nested tags, broken and deeply nested JSON, huge numbers, wrong-typed and unknown tool
//! arguments, unicode and control characters, answers with repeats and out-of-range
//! indices, text after the answer, empty turns. Every case must be read by the rules,
//! without a panic. The agent loop over the same text is `fuzz_agent.rs`.
//!
//! Case counts are printed (`cargo test -p rollout --test fuzz_protocol -- --nocapture`);
//! `RECTHINKER_FUZZ_SCALE=10` runs ten times as many, `RECTHINKER_FUZZ_SEED=N` another seed.

mod fuzz_text;

use fuzz_text::*;
use lm::engine::StopReason;
use proptest::prelude::*;
use rollout::protocol::{
    answer_block, classify, normalize_turn, observation_of, parse_answer, tool_response,
    with_thinking, AnswerError, TurnAction, ANSWER, THINK, TOOL_CALL,
};
use rollout::EndReason;
use std::collections::BTreeMap;
use std::time::Instant;

// ---------------------------------------------------------------------------------------
// The protocol's parsers.

/// `classify` says exactly what PROTOCOL.md says a turn means.
#[test]
fn classify_reads_any_turn_by_the_rules() {
    let started = Instant::now();
    let mut r = runner(40_000);
    r.run(
        &(turn(), stop_reason(), 0usize..8, 0usize..8),
        |(text, reason, calls, max)| {
            let answer = text
                .find(ANSWER.0)
                .is_some_and(|s| text[s..].contains(ANSWER.1));
            let call = text.find(TOOL_CALL.0).and_then(|s| {
                let body = &text[s + TOOL_CALL.0.len()..];
                body.find(TOOL_CALL.1).map(|e| body[..e].trim().to_string())
            });
            let expect = if answer {
                TurnAction::End(EndReason::Answer)
            } else if let Some(raw) = call {
                if calls >= max {
                    TurnAction::End(EndReason::MaxTurns)
                } else {
                    TurnAction::Call(raw)
                }
            } else {
                TurnAction::End(match reason {
                    StopReason::MaxNewTokens => EndReason::TurnTooLong,
                    StopReason::ContextFull => EndReason::ContextFull,
                    _ => EndReason::NoAnswer,
                })
            };
            prop_assert_eq!(classify(&text, &reason, calls, max), expect);
            Ok(())
        },
    )
    .unwrap();
    eprintln!(
        "fuzz_agent: classify on {} turns in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

/// `parse_answer` gives a full ranking (a permutation of 1..=n starting with the listed
/// indices) or a named error, never a panic.
#[test]
fn parse_answer_gives_a_permutation_or_a_named_error() {
    let started = Instant::now();
    let mut r = runner(40_000);
    let errors: std::cell::RefCell<BTreeMap<&'static str, usize>> = Default::default();
    r.run(&(turn(), 0usize..25), |(text, n)| {
        match parse_answer(&text, n) {
            Ok(v) => {
                let mut sorted = v.clone();
                sorted.sort_unstable();
                prop_assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                let kind = match e {
                    AnswerError::NoAnswer => {
                        let open = text.rfind(ANSWER.0);
                        prop_assert!(
                            open.is_none_or(|s| !text[s..].contains(ANSWER.1)),
                            "{text:?} has an answer"
                        );
                        "no answer"
                    }
                    AnswerError::Empty => "empty",
                    AnswerError::NotANumber(s) => {
                        prop_assert!(s.chars().count() <= 20, "echoes {s:?} whole");
                        "not a number"
                    }
                    AnswerError::OutOfRange(i) => {
                        prop_assert!(i < 1 || i as usize > n);
                        "out of range"
                    }
                    AnswerError::Duplicate(i) => {
                        prop_assert!((1..=n).contains(&i));
                        "duplicate"
                    }
                };
                *errors.borrow_mut().entry(kind).or_default() += 1;
            }
        }
        Ok(())
    })
    .unwrap();
    let cases = r.config().cases;
    // Lists of distinct in-range indices, any separators: the listed ones come first, the
    // rest follow in candidate order.
    let mut r = runner(20_000);
    let list = (1usize..25).prop_flat_map(|n| {
        (
            Just(n),
            prop::sample::subsequence((1..=n).collect::<Vec<_>>(), 1..=n).prop_shuffle(),
            prop::sample::select(vec![", ", " ", " > ", "\n", ","]),
            junk(),
        )
    });
    r.run(&list, |(n, order, sep, before)| {
        let body: Vec<String> = order.iter().map(|i| i.to_string()).collect();
        let text = format!(
            "{}{}{}{}",
            before.replace(ANSWER.0, ""),
            ANSWER.0,
            body.join(sep),
            ANSWER.1
        );
        let mut expect = order.clone();
        expect.extend((1..=n).filter(|i| !order.contains(i)));
        prop_assert_eq!(parse_answer(&text, n), Ok(expect.clone()));
        prop_assert_eq!(parse_answer(&answer_block(&expect), n), Ok(expect));
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_agent: parse_answer on {cases} turns (errors: {:?}) + {} valid lists in {:.1}s",
        errors.borrow(),
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}

/// The text of a turn as the engine ends it: cut after the first stop string.
fn as_engine_turn(text: &str) -> &str {
    [TOOL_CALL.1, ANSWER.1]
        .iter()
        .filter_map(|s| text.find(s).map(|p| p + s.len()))
        .min()
        .map_or(text, |end| &text[..end])
}

/// Normalizing a turn (what teachers store) keeps what it means: the same call, the same
/// answer; tool responses round-trip; `with_thinking` never leaves thinking tags inside the
/// reasoning.
#[test]
fn normalized_turns_keep_their_meaning() {
    let started = Instant::now();
    let mut r = runner(30_000);
    r.run(&(turn(), junk()), |(text, obs)| {
        for block in [TOOL_CALL, ANSWER, THINK] {
            let _ = normalize_turn(&text, block);
        }
        match classify(&text, &StopReason::Eos, 0, 6) {
            TurnAction::Call(raw) => {
                let n = normalize_turn(&text, TOOL_CALL);
                prop_assert_eq!(
                    classify(&n, &StopReason::Eos, 0, 6),
                    TurnAction::Call(raw),
                    "normalized: {:?}",
                    n
                );
            }
            TurnAction::End(EndReason::Answer) => {
                let n = normalize_turn(&text, ANSWER);
                prop_assert_eq!(
                    classify(&n, &StopReason::Eos, 0, 6),
                    TurnAction::End(EndReason::Answer),
                    "normalized: {:?}",
                    n
                );
                let turn = as_engine_turn(&text);
                if classify(turn, &StopReason::Eos, 0, 6) == TurnAction::End(EndReason::Answer) {
                    prop_assert_eq!(
                        parse_answer(&normalize_turn(turn, ANSWER), 10),
                        parse_answer(turn, 10)
                    );
                }
            }
            TurnAction::End(_) => {}
        }
        let wrapped = tool_response(&obs);
        prop_assert_eq!(observation_of(&wrapped), obs.as_str());
        let t = with_thinking(&obs, "<answer>1</answer>");
        let inner = t
            .strip_prefix(THINK.0)
            .and_then(|t| t.rsplit_once(THINK.1))
            .map_or("", |(r, _)| r);
        prop_assert!(
            !inner.contains(THINK.0) && !inner.contains(THINK.1),
            "{t:?}"
        );
        Ok(())
    })
    .unwrap();
    eprintln!(
        "fuzz_agent: normalize_turn/with_thinking/tool_response on {} turns in {:.1}s",
        r.config().cases,
        started.elapsed().as_secs_f64()
    );
}
