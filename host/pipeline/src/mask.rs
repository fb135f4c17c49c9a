//! Secret masking: every secret value, and its base64 and URL-encoded forms,
//! is replaced by `***` in every log line, whole, never partially.

use std::borrow::Cow;

use base64::Engine as _;

/// Masks a fixed set of secret values in text.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret that contains another is masked whole.
    needles: Vec<String>,
}

/// Values shorter than this are not masked: masking `a` or `1` would shred
/// every line and reveal the value by its gaps.
pub const MIN_SECRET_LEN: usize = 3;

impl Masker {
    /// A masker for these secret values and their encoded forms.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut needles = Vec::new();
        for v in values {
            let v = v.as_ref();
            if v.len() < MIN_SECRET_LEN {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD;
            let forms = [
                v.to_string(),
                b64.encode(v),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v),
                b64.encode(v).trim_end_matches('=').to_string(),
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string(),
                form_urlencode(v),
            ];
            // A multi-line secret is also masked line by line, since logs are split on newlines.
            let lines: Vec<String> =
                v.lines().filter(|l| l.trim().len() >= MIN_SECRET_LEN).map(|l| l.to_string()).collect();
            for f in forms.into_iter().chain(if lines.len() > 1 { lines } else { Vec::new() }) {
                if f.len() >= MIN_SECRET_LEN && !needles.contains(&f) {
                    needles.push(f);
                }
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self { needles }
    }

    /// Adds more secret values (for example a token a step minted).
    pub fn extend<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let more = Masker::new(values);
        for n in more.needles {
            if !self.needles.contains(&n) {
                self.needles.push(n);
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret form replaced by `***`.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.needles.iter().any(|n| text.contains(n.as_str())) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), "***");
            }
        }
        Cow::Owned(out)
    }
}

/// `application/x-www-form-urlencoded`: spaces become `+`.
fn form_urlencode(v: &str) -> String {
    v.split(' ')
        .map(|part| percent_encoding::utf8_percent_encode(part, percent_encoding::NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_base64_and_url_forms_whole() {
        let m = Masker::new(["s3cr3t/v@lue"]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/v@lue");
        assert_eq!(m.mask("token=s3cr3t/v@lue;"), "token=***;");
        assert_eq!(m.mask(&format!("auth {b64}")), "auth ***");
        assert_eq!(m.mask("q=s3cr3t%2Fv%40lue"), "q=***");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn longer_secret_containing_a_shorter_one_is_masked_whole() {
        let m = Masker::new(["abc", "xxabcxx"]);
        assert_eq!(m.mask("1 xxabcxx 2 abc"), "1 *** 2 ***");
    }

    #[test]
    fn short_values_are_not_masked() {
        let m = Masker::new(["a", ""]);
        assert!(m.is_empty());
        assert_eq!(m.mask("a a a"), "a a a");
    }

    proptest::proptest! {
        #[test]
        fn no_secret_survives_masking(
            secret in "[A-Za-z0-9/+=_.@-]{3,24}",
            before in "\\PC{0,40}",
            after in "\\PC{0,40}",
        ) {
            let m = Masker::new([secret.as_str()]);
            let line = format!("{before}{secret}{after}");
            let masked = m.mask(&line);
            proptest::prop_assert!(!masked.contains(secret.as_str()), "{masked}");
        }
    }
}
