//! MQTT topic names and topic filters (MQTT 3.1.1 section 4.7).
//!
//! Pure functions, no I/O. Used by config validation (`mqtt.subscribe`,
//! `relay.command_topics`), by the command checks and by link routing.

use std::sync::Arc;

/// A map keyed by topic name. The relay and the cloud writer look topics
/// up on every message (last values, link routes, the offline buffer, the
/// audit's tally): foldhash,
/// seeded at random per map, hashes these short keys in a fraction of the
/// instructions of std's SipHash. Topics come from the home's own broker,
/// and every such map is bounded, so SipHash's resistance to chosen
/// collisions buys nothing here.
pub type TopicMap<V> = std::collections::HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Largest topic name or filter MQTT allows, in bytes.
pub const MAX_TOPIC_BYTES: usize = 65535;

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("topic name contains a wildcard (`+` or `#`)")]
    Wildcard,
    #[error("`#` must be the last level of a filter and stand alone in it")]
    BadMultiLevel,
    #[error("`+` must stand alone in its level")]
    BadSingleLevel,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic *name* (what is published): no wildcards.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic *filter* (what is subscribed to or allowed).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// Does `topic` (a valid name) match `filter` (a valid filter)?
///
/// Topics starting with `$` are not matched by a leading wildcard, as the
/// MQTT spec requires.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A list of filters checked together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSet {
    filters: Vec<String>,
}

impl FilterSet {
    /// Builds a set, validating every filter; the error names the bad one.
    pub fn new<I, S>(filters: I) -> Result<Self, (String, TopicError)>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut out = Vec::new();
        for f in filters {
            let f = f.into();
            if let Err(e) = validate_filter(&f) {
                return Err((f, e));
            }
            out.push(f);
        }
        Ok(Self { filters: out })
    }

    /// True when any filter matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| matches(f, topic))
    }

    /// The filters, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.filters
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        assert!(matches("ampio/from/#", "ampio/from/ab12/state/o/1"));
        assert!(matches("ampio/from/#", "ampio/from"));
        assert!(matches("ampio/+/ab12/#", "ampio/to/ab12/o/1/cmd"));
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/c/d"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("+", ""));
    }

    #[test]
    fn name_validation() {
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+/b"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Nul));
        assert_eq!(validate_name(&"x".repeat(65536)), Err(TopicError::TooLong));
        assert!(validate_name("ampio/to/ab12/o/1/cmd").is_ok());
    }

    #[test]
    fn filter_validation() {
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("#").is_ok());
        assert!(validate_filter("+/+/x").is_ok());
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a#"), Err(TopicError::BadMultiLevel));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::BadSingleLevel));
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
    }
}
