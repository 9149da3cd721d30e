//! Parsing the final `<answer>i1, i2, ..., i10</answer>` (PROTOCOL.md "Answer parsing"):
//! distinct, in-range, 1-based candidate indices, best first. Missing indices are appended
//! in candidate order; duplicates, out-of-range indices or no answer make it invalid.

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AnswerError {
    NoAnswer,
    Empty,
    NotANumber(String),
    OutOfRange(i64),
    Duplicate(usize),
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer => write!(f, "no <answer>...</answer>"),
            Self::Empty => write!(f, "empty answer"),
            Self::NotANumber(s) => write!(f, "answer item `{s}` is not a candidate index"),
            Self::OutOfRange(i) => write!(f, "answer index {i} is out of range"),
            Self::Duplicate(i) => write!(f, "answer index {i} appears twice"),
        }
    }
}

/// The full ranking (1-based indices, length `n`) from the text of the final turn.
pub fn parse_answer(text: &str, n: usize) -> Result<Vec<usize>, AnswerError> {
    let start = text.rfind("<answer>").ok_or(AnswerError::NoAnswer)?;
    let body = &text[start + "<answer>".len()..];
    let body = body
        .find("</answer>")
        .map(|e| &body[..e])
        .ok_or(AnswerError::NoAnswer)?;
    let mut seen = vec![false; n + 1];
    let mut order = Vec::new();
    for raw in body.split(|c: char| c == ',' || c == '>' || c.is_whitespace()) {
        let tok = raw
            .trim()
            .trim_matches(|c: char| c == '[' || c == ']' || c == '.' || c == '(' || c == ')');
        if tok.is_empty() {
            continue;
        }
        let i: i64 = tok
            .parse()
            .map_err(|_| AnswerError::NotANumber(tok.chars().take(20).collect()))?;
        if i < 1 || i as usize > n {
            return Err(AnswerError::OutOfRange(i));
        }
        let i = i as usize;
        if seen[i] {
            return Err(AnswerError::Duplicate(i));
        }
        seen[i] = true;
        order.push(i);
    }
    if order.is_empty() {
        return Err(AnswerError::Empty);
    }
    order.extend((1..=n).filter(|&i| !seen[i]));
    Ok(order)
}

/// The 1-based rank of the candidate at 0-based `target_index` in `ranking`.
pub fn rank_in(ranking: &[usize], target_index: usize) -> Option<usize> {
    ranking
        .iter()
        .position(|&i| i == target_index + 1)
        .map(|p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_completes() {
        assert_eq!(
            parse_answer("x <answer>3, 1, 2</answer>", 4),
            Ok(vec![3, 1, 2, 4])
        );
        assert_eq!(
            parse_answer("<answer>[2] [1]</answer>", 3),
            Ok(vec![2, 1, 3])
        );
        assert_eq!(
            parse_answer("<answer>1 > 2 > 3</answer>", 3),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(rank_in(&[3, 1, 2, 4], 0), Some(2));
    }

    #[test]
    fn invalid_answers() {
        assert_eq!(parse_answer("no tags", 10), Err(AnswerError::NoAnswer));
        assert_eq!(parse_answer("<answer>1, 2", 10), Err(AnswerError::NoAnswer));
        assert_eq!(
            parse_answer("<answer></answer>", 10),
            Err(AnswerError::Empty)
        );
        assert_eq!(
            parse_answer("<answer>1, 1</answer>", 10),
            Err(AnswerError::Duplicate(1))
        );
        assert_eq!(
            parse_answer("<answer>0, 1</answer>", 10),
            Err(AnswerError::OutOfRange(0))
        );
        assert_eq!(
            parse_answer("<answer>11</answer>", 10),
            Err(AnswerError::OutOfRange(11))
        );
        assert_eq!(
            parse_answer("<answer>Heat</answer>", 10),
            Err(AnswerError::NotANumber("Heat".into()))
        );
    }
}
