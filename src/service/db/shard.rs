//! Which shard holds a business: the plan's three strategies over a configured list of shards.
//!
//! Pure and synchronous; the pools for each shard live in [`super::Database`].

use std::collections::HashMap;

use crate::config::{ShardingConfig, ShardingStrategy};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("shard ids must be unique, {0:?} appears twice")]
    DuplicateId(String),
    #[error("range sharding needs range_from on every shard (missing on {0:?})")]
    MissingRange(String),
    #[error("range sharding needs one shard with range_from: \"\" so every key has a home")]
    NoLowerBound,
    #[error("range_from {0:?} is used by two shards")]
    DuplicateRange(String),
    #[error("key {0:?} is listed under two shards")]
    DuplicateKey(String),
}

#[derive(Debug, Clone)]
pub struct ShardRouter {
    strategy: ShardingStrategy,
    count: usize,
    /// Sorted by lower bound.
    ranges: Vec<(String, usize)>,
    directory: HashMap<String, usize>,
}

impl ShardRouter {
    pub fn single() -> Self {
        Self {
            strategy: ShardingStrategy::Hash,
            count: 1,
            ranges: Vec::new(),
            directory: HashMap::new(),
        }
    }

    pub fn from_config(config: &ShardingConfig) -> Result<Self, ShardError> {
        if config.shards.len() <= 1 {
            return Ok(Self::single());
        }
        let mut seen = HashMap::new();
        for (i, s) in config.shards.iter().enumerate() {
            if seen.insert(s.id.clone(), i).is_some() {
                return Err(ShardError::DuplicateId(s.id.clone()));
            }
        }
        let mut router = Self {
            strategy: config.strategy,
            count: config.shards.len(),
            ranges: Vec::new(),
            directory: HashMap::new(),
        };
        match config.strategy {
            ShardingStrategy::Hash => {}
            ShardingStrategy::Range => {
                for (i, s) in config.shards.iter().enumerate() {
                    let from = s
                        .range_from
                        .clone()
                        .ok_or_else(|| ShardError::MissingRange(s.id.clone()))?;
                    router.ranges.push((from, i));
                }
                router.ranges.sort();
                if !router.ranges[0].0.is_empty() {
                    return Err(ShardError::NoLowerBound);
                }
                if let Some(w) = router.ranges.windows(2).find(|w| w[0].0 == w[1].0) {
                    return Err(ShardError::DuplicateRange(w[0].0.clone()));
                }
            }
            ShardingStrategy::Directory => {
                for (i, s) in config.shards.iter().enumerate() {
                    for key in &s.keys {
                        if router.directory.insert(key.clone(), i).is_some() {
                            return Err(ShardError::DuplicateKey(key.clone()));
                        }
                    }
                }
            }
        }
        Ok(router)
    }

    pub fn shard_count(&self) -> usize {
        self.count
    }

    /// Index of the shard that holds `key` (a business id).
    pub fn route(&self, key: &str) -> usize {
        if self.count == 1 {
            return 0;
        }
        match self.strategy {
            ShardingStrategy::Hash => self.by_hash(key),
            ShardingStrategy::Range => {
                // Last range whose lower bound is <= key; the "" bound guarantees one exists.
                let pos = self
                    .ranges
                    .partition_point(|(from, _)| from.as_str() <= key);
                self.ranges[pos.saturating_sub(1)].1
            }
            ShardingStrategy::Directory => self
                .directory
                .get(key)
                .copied()
                .unwrap_or_else(|| self.by_hash(key)),
        }
    }

    fn by_hash(&self, key: &str) -> usize {
        (fnv1a32(key.as_bytes()) % self.count as u32) as usize
    }
}

/// 32-bit FNV-1a. Written out because the `fnv` crate only offers the 64-bit variant and the plan's
/// routing (Go's `hash/fnv.New32a`) must be reproduced bit for bit so both route keys identically.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u32::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ShardConfig;

    fn shard(id: &str, range_from: Option<&str>, keys: &[&str]) -> ShardConfig {
        ShardConfig {
            id: id.into(),
            url: None,
            url_file: None,
            replica_urls: vec![],
            replica_url_files: vec![],
            range_from: range_from.map(Into::into),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn config(strategy: ShardingStrategy, shards: Vec<ShardConfig>) -> ShardingConfig {
        ShardingConfig { strategy, shards }
    }

    #[test]
    fn fnv1a32_matches_reference_vectors() {
        // Vectors from the FNV reference (and Go's hash/fnv).
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn single_shard_always_zero() {
        let r = ShardRouter::from_config(&ShardingConfig::default()).unwrap();
        assert_eq!(r.route("anything"), 0);
    }

    #[test]
    fn hash_spreads_and_is_stable() {
        let r = ShardRouter::from_config(&config(
            ShardingStrategy::Hash,
            vec![shard("a", None, &[]), shard("b", None, &[])],
        ))
        .unwrap();
        assert_eq!(r.route("foobar"), (0xbf9cf968u32 % 2) as usize);
        let mut counts = [0usize; 2];
        for i in 0..1000 {
            counts[r.route(&format!("business-{i}"))] += 1;
        }
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    }

    #[test]
    fn range_picks_the_enclosing_range() {
        let r = ShardRouter::from_config(&config(
            ShardingStrategy::Range,
            vec![shard("hi", Some("8"), &[]), shard("lo", Some(""), &[])],
        ))
        .unwrap();
        assert_eq!(r.route("0190abcd"), 1);
        assert_eq!(r.route("7fffffff"), 1);
        assert_eq!(r.route("8"), 0);
        assert_eq!(r.route("ffff"), 0);
    }

    #[test]
    fn range_requires_a_lower_bound() {
        let err = ShardRouter::from_config(&config(
            ShardingStrategy::Range,
            vec![shard("a", Some("1"), &[]), shard("b", Some("8"), &[])],
        ))
        .unwrap_err();
        assert_eq!(err, ShardError::NoLowerBound);
        let err = ShardRouter::from_config(&config(
            ShardingStrategy::Range,
            vec![shard("a", Some(""), &[]), shard("b", None, &[])],
        ))
        .unwrap_err();
        assert_eq!(err, ShardError::MissingRange("b".into()));
    }

    #[test]
    fn directory_pins_and_falls_back_to_hash() {
        let r = ShardRouter::from_config(&config(
            ShardingStrategy::Directory,
            vec![shard("a", None, &["vip"]), shard("b", None, &["big"])],
        ))
        .unwrap();
        assert_eq!(r.route("vip"), 0);
        assert_eq!(r.route("big"), 1);
        assert_eq!(r.route("foobar"), (0xbf9cf968u32 % 2) as usize);
        let err = ShardRouter::from_config(&config(
            ShardingStrategy::Directory,
            vec![shard("a", None, &["k"]), shard("b", None, &["k"])],
        ))
        .unwrap_err();
        assert_eq!(err, ShardError::DuplicateKey("k".into()));
    }

    #[test]
    fn duplicate_ids_rejected() {
        let err = ShardRouter::from_config(&config(
            ShardingStrategy::Hash,
            vec![shard("a", None, &[]), shard("a", None, &[])],
        ))
        .unwrap_err();
        assert_eq!(err, ShardError::DuplicateId("a".into()));
    }
}
