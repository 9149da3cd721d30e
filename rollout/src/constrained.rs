//! Structured answers (an option, off by default): once a turn opens `<answer>`, its tokens
//! are constrained to a permutation of the candidate indices, `i1, i2, ..., in</answer>`,
//! every index 1..=n exactly once, separated by a comma, a comma and one space or newline, or
//! one space or newline. Only the answer
//! is constrained: thinking and tool calls stay free, and a model that never opens an answer
//! is not forced to.

use crate::protocol::ANSWER;
use lm::constraint::{Constraint, TokenConstraint};
use lm::tokenizer::Tokenizer;
use std::sync::Arc;

/// The answer grammar for `n` candidates over the tokens that can appear in an answer.
pub struct AnswerConstraint {
    n: usize,
    /// (id, text) of every token made only of digits, separators and the closing tag's
    /// characters: the only ones that can ever be allowed.
    tokens: Arc<Vec<(i64, String)>>,
}

/// Characters a token may hold to be a candidate inside an answer.
fn answer_char(c: char) -> bool {
    c.is_ascii_digit() || c == ',' || c == ' ' || c == '\n' || ANSWER.1.contains(c)
}

impl AnswerConstraint {
    /// Scans the vocabulary once (each token decoded alone).
    pub fn tokens_of(tok: &Tokenizer) -> Arc<Vec<(i64, String)>> {
        let mut out = Vec::new();
        for id in 0..tok.vocab_size() as i64 {
            if let Ok(text) = tok.decode(&[id], false) {
                if !text.is_empty() && text.chars().all(answer_char) {
                    out.push((id, text));
                }
            }
        }
        Arc::new(out)
    }

    pub fn new(n: usize, tokens: Arc<Vec<(i64, String)>>) -> Self {
        Self { n, tokens }
    }

    pub fn shared(n: usize, tokens: Arc<Vec<(i64, String)>>) -> Constraint {
        Constraint(Arc::new(Self::new(n, tokens)))
    }

    /// The text after the turn's last `<answer>`, while that answer is still open.
    fn open_body(turn_text: &str) -> Option<&str> {
        let start = turn_text.rfind(ANSWER.0)?;
        let body = &turn_text[start + ANSWER.0.len()..];
        (!body.contains(ANSWER.1)).then_some(body)
    }
}

impl TokenConstraint for AnswerConstraint {
    fn active(&self, turn_text: &str) -> bool {
        Self::open_body(turn_text).is_some()
    }

    fn allowed(&self, turn_text: &str) -> Vec<i64> {
        let Some(body) = Self::open_body(turn_text) else {
            return Vec::new();
        };
        let mut s = body.to_string();
        let base = s.len();
        let mut out = Vec::new();
        for (id, text) in self.tokens.iter() {
            s.truncate(base);
            s.push_str(text);
            if viable(&s, self.n) {
                out.push(*id);
            }
        }
        out
    }
}

/// Whether `body` (the text after `<answer>`) is a prefix of some `i1, ..., in</answer>` with
/// every index of 1..=n exactly once (nothing after the closing tag).
pub fn viable(body: &str, n: usize) -> bool {
    let (list, close) = match body.find('<') {
        Some(p) => (&body[..p], Some(&body[p..])),
        None => (body, None),
    };
    let width = n.to_string().len();
    let mut used = vec![false; n + 1];
    let mut count = 0;
    let mut num = String::new();
    // Whether the last separator seen since the last number was a comma; whether the last
    // character was whitespace (at most one in a row, so an answer cannot stall on spaces).
    let mut comma = false;
    let mut space = false;
    let take = |num: &mut String, used: &mut Vec<bool>, count: &mut usize| -> bool {
        match num.parse::<usize>() {
            Ok(i) if (1..=n).contains(&i) && !used[i] => {
                used[i] = true;
                *count += 1;
                num.clear();
                true
            }
            _ => false,
        }
    };
    for c in list.chars() {
        if c.is_ascii_digit() {
            if (num.is_empty() && c == '0') || num.len() >= width {
                return false;
            }
            num.push(c);
            comma = false;
            space = false;
        } else if c == ',' || c == ' ' || c == '\n' {
            if space {
                return false;
            }
            space = c != ',';
            if !num.is_empty() && !take(&mut num, &mut used, &mut count) {
                return false;
            }
            if c == ',' {
                // One comma between two numbers, none before the first or after the last.
                if comma || count == 0 || count == n {
                    return false;
                }
                comma = true;
            }
        } else {
            return false;
        }
    }
    match close {
        None => {
            if num.is_empty() {
                return true;
            }
            // A number still being written must be able to become an unused index.
            (1..=n).any(|i| !used[i] && i.to_string().starts_with(num.as_str()))
        }
        Some(tail) => {
            if !num.is_empty() && !take(&mut num, &mut used, &mut count) {
                return false;
            }
            count == n && !comma && ANSWER.1.starts_with(tail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_accepts_permutations_and_their_prefixes_only() {
        let full = "3, 1, 10, 2, 4, 5, 6, 7, 8, 9</answer>";
        for end in 0..=full.len() {
            assert!(viable(&full[..end], 10), "prefix {:?}", &full[..end]);
        }
        for ok in [
            "",
            " ",
            "1",
            "1,2",
            "1 2",
            "1,\n2",
            " 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 </",
        ] {
            assert!(viable(ok, 10), "{ok:?}");
        }
        for bad in [
            "0",
            "11",
            "1, 1,",
            ",1",
            "1,,2",
            "1, 2</answer>",
            "a",
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10</answer> more",
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10</b",
            "[1",
            "  1",
            "1,  2",
            "1 ,2",
            "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 \n</answer>",
        ] {
            assert!(!viable(bad, 10), "{bad:?}");
        }
        // "1" used: only "10" may still start with a 1.
        assert!(viable("1, 1", 10) && viable("1, 10", 10) && !viable("1, 1 ", 10));
        assert!(!viable("2, 3, 4, 5, 6, 7, 8, 9, 10, 1</answer>x", 10));
        assert!(viable("2, 3, 4, 5, 6, 7, 8, 9, 10, 1</answer>", 10));
    }
}
