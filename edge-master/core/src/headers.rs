//! Case-insensitive request headers and secrets that never print themselves.

use std::collections::BTreeMap;
use std::fmt;

/// HTTP request headers, looked up case-insensitively.
///
/// Adapters build it from whatever their framework gives them; names are stored in lower case
/// and a repeated header keeps every value in order.
///
/// ```
/// use skiff_edge_core::Headers;
///
/// let headers = Headers::from_pairs([("X-GitHub-Event", "push"), ("Accept", "*/*")]);
/// assert_eq!(headers.get("x-github-event"), Some("push"));
/// assert_eq!(headers.get("X-GITHUB-EVENT"), Some("push"));
/// assert_eq!(headers.get("x-missing"), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty header set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds headers from `(name, value)` pairs.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        pairs.into_iter().collect()
    }

    /// Adds a value, keeping any earlier value of the same name.
    pub fn append(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        self.entries.push((name.as_ref().to_ascii_lowercase(), value.as_ref().to_owned()));
    }

    /// The first value of `name`, compared case-insensitively, with surrounding whitespace
    /// trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }

    /// The first non-empty value of `name`.
    pub(crate) fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Whether a header called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All `(lower-case name, value)` pairs in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of header values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A map of lower-case names to values (repeated headers joined with `", "`), the shape CEL
    /// filters see as `headers`.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &self.entries {
            map.entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        map
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.append(k, v);
        }
        headers
    }
}

impl fmt::Debug for Headers {
    /// Values of headers that carry credentials are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.entries {
            if is_sensitive(name) {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

pub(crate) fn is_sensitive(name: &str) -> bool {
    name == "authorization" || name.ends_with("-token") || name.contains("signature")
}

/// A shared secret: a webhook secret, a plain token, or the dispatch key.
///
/// It may hold several keys so that a secret can be rotated without downtime: a request signed
/// with any of them is accepted, and [`sign_dispatch`](crate::sign_dispatch) signs with every
/// key (a Standard Webhooks signature header carries a list).
///
/// A key written `whsec_<base64>` (the Standard Webhooks form) is used as the decoded bytes for
/// Standard Webhooks signatures and dispatches; every other scheme uses the text as written,
/// because that is what the Git hosts do.
///
/// `Debug` never prints the key.
///
/// ```
/// use skiff_edge_core::Secret;
///
/// let secret = Secret::new("s3cret").with_previous("old-s3cret");
/// assert_eq!(format!("{secret:?}"), "Secret(2 keys, redacted)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    keys: Vec<Vec<u8>>,
}

impl Secret {
    /// A secret with one key.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Secret { keys: vec![key.as_ref().to_vec()] }
    }

    /// Also accepts `key`, e.g. the secret being rotated out. The first key stays the one used
    /// first.
    pub fn with_previous(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    /// The keys as written, first the current one.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys.iter().map(Vec::as_slice)
    }

    /// Whether any key is empty, which would make token comparisons meaningless.
    pub(crate) fn has_empty_key(&self) -> bool {
        self.keys.is_empty() || self.keys.iter().any(Vec::is_empty)
    }

    /// The keys as used for Standard Webhooks: `whsec_` + base64 is decoded, anything else is
    /// used as written.
    pub(crate) fn standard_webhooks_keys(&self) -> Vec<Vec<u8>> {
        self.keys.iter().map(|k| crate::crypto::standard_webhooks_key(k)).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.keys.len();
        write!(f, "Secret({n} key{}, redacted)", if n == 1 { "" } else { "s" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_join_in_the_map() {
        let h = Headers::from_pairs([("A", "1"), ("a", "2"), ("B", " x ")]);
        assert_eq!(h.get("A"), Some("1"));
        assert_eq!(h.get("b"), Some("x"));
        assert_eq!(h.to_map()["a"], "1, 2");
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn debug_redacts_credentials() {
        let h = Headers::from_pairs([("Authorization", "Bearer t"), ("X-Gitlab-Token", "t"), ("X-Event", "e")]);
        let s = format!("{h:?}");
        assert!(!s.contains("Bearer t"));
        assert!(s.contains("\"x-event\": \"e\""));
        assert_eq!(format!("{:?}", Secret::new("abc")), "Secret(1 key, redacted)");
    }
}
