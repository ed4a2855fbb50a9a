//! Secrets that never print themselves.

use std::fmt;

/// A token or password. `Debug` and `Display` show a masked form, so a secret
/// can travel through logs and reports without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Every secret this process generated: what is masked in whatever it
/// writes out after the owner of a secret is gone (a stack that failed to
/// come up leaves its logs, not its tokens).
static GENERATED: std::sync::Mutex<Vec<Secret>> = std::sync::Mutex::new(Vec::new());

impl Secret {
    /// A fresh random token: 32 bytes of OS randomness, hex encoded.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let secret = Self(hex::encode(bytes));
        if let Ok(mut generated) = GENERATED.lock() {
            generated.push(secret.clone());
        }
        secret
    }

    /// Every secret [`Secret::generate`] made in this process so far.
    pub fn all_generated() -> Vec<Secret> {
        GENERATED.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The real value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Four leading characters and the length: enough to tell tokens apart.
    pub fn masked(&self) -> String {
        let head: String = self.0.chars().take(4).collect();
        format!("{head}…({} chars)", self.0.chars().count())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Replaces every occurrence of each secret in `text` by its masked form.
pub fn mask_all(text: &str, secrets: &[&Secret]) -> String {
    secrets
        .iter()
        .filter(|s| !s.0.is_empty())
        .fold(text.to_owned(), |acc, s| acc.replace(&s.0, &s.masked()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("abcdef0123456789");
        assert!(!format!("{secret:?}").contains("0123456789"));
        assert!(!format!("{secret}").contains("0123456789"));
        assert_eq!(secret.masked(), "abcd…(16 chars)");
    }

    #[test]
    fn generated_secrets_are_remembered_for_masking() {
        let secret = Secret::generate();
        assert!(Secret::all_generated().contains(&secret));
    }

    #[test]
    fn mask_all_replaces_every_occurrence() {
        let secret = Secret::new("tok-123456");
        let text = "Authorization: token tok-123456 and again tok-123456";
        let masked = mask_all(text, &[&secret]);
        assert!(!masked.contains("tok-123456"), "{masked}");
    }
}
