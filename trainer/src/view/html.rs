//! Building blocks of the viewer's pages: HTML escaping, JSON safe inside a `<script>` element,
//! templates with `{{NAME}}` slots, base64 for embedded images, and the page frame (a strict
//! Content-Security-Policy: no network, only the page's own scripts run).

use anyhow::{bail, Result};
use serde::Serialize;

/// The error catcher every page loads first (`data-js-errors` on `<html>`, `#js-errors`).
const COMMON_JS: &str = include_str!("common.js");
const COMMON_CSS: &str = include_str!("common.css");
const FRAME: &str = include_str!("frame.html");

/// `s` as HTML text or attribute value: `& < > " '` escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` as JSON that is inert inside `<script type="application/json">`: every `<`, `>` and `&`
/// (which JSON only has inside strings) written as a `\u` escape, so no `</script>` or
/// `<!--` can end or change the element; U+2028/U+2029 escaped too.
pub fn script_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    let text = serde_json::to_string(v)?;
    let mut out = String::with_capacity(text.len() + 64);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Fills the `{{NAME}}` slots of `template` in one pass: inserted values are never scanned
/// again, so data that contains `{{...}}` stays as it is. A slot without a value is an error.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut out =
        String::with_capacity(template.len() + vars.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        let Some((_, value)) = vars.iter().find(|(k, _)| *k == name) else {
            bail!("template slot {{{{{name}}}}} has no value");
        };
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Standard base64 (RFC 4648, padded), for `data:` image URLs.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A random token for the page's CSP nonce: the data was written before the page, so it
/// cannot carry a script that the policy lets run.
fn nonce() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..4)
        .map(|_| format!("{:08x}", rng.random::<u32>()))
        .collect()
}

/// A whole page: `title` (text), the page's own CSS and JS, `body` (HTML, already escaped
/// where it holds data) and `data` (JSON for a `<script type="application/json" id="data">`).
pub fn page(title: &str, css: &str, body: &str, data: &str, js: &str) -> Result<String> {
    let nonce = nonce();
    fill(
        FRAME,
        &[
            ("TITLE", &escape(title)),
            ("NONCE", &nonce),
            ("COMMON_CSS", COMMON_CSS),
            ("CSS", css),
            ("COMMON_JS", COMMON_JS),
            ("BODY", body),
            ("DATA", data),
            ("JS", js),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn script_json_cannot_close_the_element_and_round_trips() {
        let v = serde_json::json!({"t": "</script><script>x()</script> <!-- & \u{2028}"});
        let s = script_json(&v).unwrap();
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }

    #[test]
    fn fill_is_one_pass() {
        let t = "a {{X}} b {{Y}} c";
        assert_eq!(
            fill(t, &[("X", "{{Y}}"), ("Y", "2")]).unwrap(),
            "a {{Y}} b 2 c"
        );
        assert!(fill("{{Z}}", &[]).is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
