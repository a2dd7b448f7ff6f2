//! `/ws` topic patterns (SPEC §4.3): dot-separated tokens, `*` for one token, a final `>`
//! for the rest. One definition for the node's permission checks and its configuration.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::subject::validate_identifier;

/// Checks that `pattern` is a topic or topic pattern; the error says what a valid one is.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let ok = match *token {
            "*" => true,
            ">" => i == tokens.len() - 1,
            t => validate_identifier(t).is_ok(),
        };
        if !ok {
            return Err(format!(
                "topic pattern {pattern:?} is invalid: tokens are [A-Za-z0-9_-]{{1,128}} or `*`, separated by dots, and `>` may only be the last token"
            ));
        }
    }
    Ok(())
}

/// A topic pattern known to be valid, so configuration rejects a bad one while parsing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPattern(String);

impl TopicPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = String;

    fn try_from(pattern: String) -> Result<Self, String> {
        validate_pattern(&pattern)?;
        Ok(TopicPattern(pattern))
    }
}

impl TryFrom<&str> for TopicPattern {
    type Error = String;

    fn try_from(pattern: &str) -> Result<Self, String> {
        TopicPattern::try_from(pattern.to_owned())
    }
}

impl From<TopicPattern> for String {
    fn from(pattern: TopicPattern) -> String {
        pattern.0
    }
}

impl Deref for TopicPattern {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_dot_separated_tokens_with_a_final_gt() {
        for good in ["updates.*", "updates.>", ">", "a.b-c_d"] {
            assert!(TopicPattern::try_from(good).is_ok(), "{good}");
        }
        for bad in ["a.>.b", "a.b*", "a..b", ""] {
            assert!(TopicPattern::try_from(bad).is_err(), "{bad}");
        }
    }
}
