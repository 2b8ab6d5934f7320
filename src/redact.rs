//! Secrets hidden before a configuration value is shown or logged: the password of a
//! PostgreSQL connection string, in every form libpq (and tokio-postgres) accepts, and the
//! librdkafka properties that carry credentials.
//!
//! Masking errs on the side of hiding: when a connection string cannot be read to its end,
//! everything from the unreadable part on is hidden.

use std::borrow::Cow;
use std::ops::Range;

/// What a hidden value is replaced with.
pub const MASK: &str = "****";

/// Connection parameters whose value is a secret.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// `conninfo` with every password replaced by [`MASK`]: a URL's `user:password@`, its
/// `password` and `sslpassword` query parameters, or the same keys of a `key=value` string.
pub fn conninfo(conninfo: &str) -> String {
    let spans = if is_url(conninfo) { url_secret_spans(conninfo) } else { keyword_secret_spans(conninfo) };
    replace_spans(conninfo, spans)
}

/// Whether a librdkafka property holds a credential (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...) rather than a file name or a setting.
pub fn is_secret_kafka_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with(".location") {
        return false;
    }
    ["password", "secret", "token", "key"].iter().any(|s| key.contains(s))
        || ["sasl.oauthbearer.config", "sasl.oauthbearer.extensions"].contains(&key.as_str())
}

/// A librdkafka property's value as it may be shown.
pub fn kafka_property<'a>(key: &str, value: &'a str) -> Cow<'a, str> {
    if is_secret_kafka_property(key) { Cow::Borrowed(MASK) } else { Cow::Borrowed(value) }
}

/// A secret as it may be shown: [`MASK`], or empty when it is unset.
pub fn secret(value: &str) -> Cow<'_, str> {
    if value.is_empty() { Cow::Borrowed(value) } else { Cow::Borrowed(MASK) }
}

fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

fn is_secret_param(key: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p))
}

/// The password of the user info, and the values of secret query parameters.
fn url_secret_spans(url: &str) -> Vec<Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let mut spans = Vec::new();
    // tokio-postgres ends the user info at the first '@' wherever it is, libpq only before
    // a '/'; the password is whatever lies between the first ':' and that '@'.
    if let Some(at) = url[start..].find('@').map(|i| start + i)
        && let Some(colon) = url[start..at].find(':').map(|i| start + i)
    {
        spans.push(colon + 1..at);
    }
    // A query parameter starts after any '?' or '&'; masking each such candidate covers
    // every way a parser may split the string.
    for (i, c) in url[start..].char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let param = start + i + 1;
        let Some(eq) = url[param..].find('=').map(|e| param + e) else { continue };
        let key = percent_decode(&url[param..eq]);
        if is_secret_param(key.trim()) {
            let end = url[eq + 1..].find('&').map_or(url.len(), |e| eq + 1 + e);
            spans.push(eq + 1..end);
        }
    }
    spans
}

/// The values of secret keys in a `key=value ...` string, quoted or not.
fn keyword_secret_spans(s: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut reader = KeywordReader { s, at: 0 };
    loop {
        match reader.next_param() {
            Ok(Some((key, value))) if is_secret_param(key) => spans.push(value),
            Ok(Some(_)) => {}
            Ok(None) => return spans,
            Err(rest) => {
                spans.push(rest);
                return spans;
            }
        }
    }
}

/// Reads `key = value` pairs as libpq does: values are single-quoted or end at white space,
/// and a backslash escapes the next character in both.
struct KeywordReader<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> KeywordReader<'a> {
    /// The next key and its value's span (quotes included); `Err` holds the unreadable rest.
    fn next_param(&mut self) -> Result<Option<(&'a str, Range<usize>)>, Range<usize>> {
        self.skip_ws();
        let key_start = self.at;
        self.at += self.rest().find(|c: char| c.is_whitespace() || c == '=').unwrap_or(self.rest().len());
        if self.at == key_start {
            return if self.at == self.s.len() { Ok(None) } else { Err(key_start..self.s.len()) };
        }
        let key = &self.s[key_start..self.at];
        self.skip_ws();
        if !self.rest().starts_with('=') {
            return Err(key_start..self.s.len());
        }
        self.at += 1;
        self.skip_ws();
        let value_start = self.at;
        let value_end = if self.rest().starts_with('\'') {
            self.quoted_end(value_start + 1)
        } else {
            Some(self.unquoted_end(value_start))
        };
        match value_end {
            Some(end) if end > value_start => {
                self.at = end;
                Ok(Some((key, value_start..end)))
            }
            _ => Err(value_start..self.s.len()),
        }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_ws(&mut self) {
        self.at += self.rest().len() - self.rest().trim_start().len();
    }

    /// Just past the closing quote, if there is one.
    fn quoted_end(&self, from: usize) -> Option<usize> {
        let mut chars = self.s[from..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' => return Some(from + i + 1),
                _ => {}
            }
        }
        None
    }

    fn unquoted_end(&self, from: usize) -> usize {
        let mut chars = self.s[from..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c.is_whitespace() => return from + i,
                _ => {}
            }
        }
        self.s.len()
    }
}

/// Decodes `%XX` escapes; anything else is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|_| bytes[i] == b'%').and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` with each span (merged where they overlap) replaced by [`MASK`].
fn replace_spans(s: &str, mut spans: Vec<Range<usize>>) -> String {
    spans.retain(|r| !r.is_empty());
    spans.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for span in spans {
        if span.end <= copied {
            continue;
        }
        if span.start >= copied {
            out.push_str(&s[copied..span.start]);
            out.push_str(MASK);
        }
        copied = span.end;
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_of_a_url() {
        assert_eq!(conninfo("postgres://app:hunter2@db:5432/pw"), "postgres://app:****@db:5432/pw");
        assert_eq!(conninfo("postgresql://app:a%40b@h1,h2:5433/pw"), "postgresql://app:****@h1,h2:5433/pw");
        assert_eq!(conninfo("postgres://app@db/pw"), "postgres://app@db/pw");
        assert_eq!(conninfo("postgres://db/pw"), "postgres://db/pw");
    }

    #[test]
    fn masks_secret_query_parameters_of_a_url() {
        assert_eq!(
            conninfo("postgres://db/pw?password=hunter2&sslmode=require"),
            "postgres://db/pw?password=****&sslmode=require"
        );
        assert_eq!(
            conninfo("postgres://db/pw?sslmode=require&sslpassword=k3y&application_name=x"),
            "postgres://db/pw?sslmode=require&sslpassword=****&application_name=x"
        );
        // libpq decodes the keyword too.
        assert_eq!(conninfo("postgres://db/pw?pass%77ord=hunter2"), "postgres://db/pw?pass%77ord=****");
        assert_eq!(conninfo("postgres://u:p@db/pw?password=q"), "postgres://u:****@db/pw?password=****");
    }

    #[test]
    fn masks_what_a_sloppy_parser_would_take_for_a_password() {
        // tokio-postgres ends the user info at the first '@', even in the query.
        let shown = conninfo("postgres://db:5432/pw?password=a@b");
        assert!(!shown.contains("a@b") && !shown.contains("=a"), "{shown}");
    }

    #[test]
    fn masks_the_password_of_a_keyword_string() {
        assert_eq!(
            conninfo("host=db port=5432 user=app password=hunter2 dbname=pw"),
            "host=db port=5432 user=app password=**** dbname=pw"
        );
        assert_eq!(
            conninfo("host=db password = 'a b\\'c' sslmode=require"),
            "host=db password = **** sslmode=require"
        );
        assert_eq!(conninfo("password=hun\\ ter2 host=db"), "password=**** host=db");
        assert_eq!(conninfo("host=db sslpassword='k3y'"), "host=db sslpassword=****");
        assert_eq!(conninfo("host=db user=app"), "host=db user=app");
    }

    #[test]
    fn hides_the_rest_of_a_string_it_cannot_read() {
        assert_eq!(conninfo("host=db password='never closed"), "host=db password=****");
        assert_eq!(conninfo("host=db junk password=x"), "host=db ****");
    }

    #[test]
    fn tells_credential_properties_from_settings() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "some.future.Secret",
        ] {
            assert!(is_secret_kafka_property(key), "{key}");
        }
        for key in ["ssl.key.location", "ssl.keystore.location", "sasl.username", "security.protocol"] {
            assert!(!is_secret_kafka_property(key), "{key}");
        }
    }
}
