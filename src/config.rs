//! Service configuration: defaults, then a YAML file, then `KYB_*` environment variables, then flags.
//!
//! The file layer is plain serde; the environment and flag layers come from clap (`#[arg(env)]`), which
//! already gives flags precedence over the environment. Credentials may be read from files (mounted
//! Secrets) and are held in [`Secret`], whose `Debug` never prints the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub const NO_AUTH: &str = "no authentication configured: set auth.api_key_files (--api-keys-file) or auth.jwt, or pass --insecure-no-auth for local work";

/// A credential (a DSN with a password, a Redis URL with a token). Never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self(raw.trim().to_owned()))
    }
    /// Host and port only, for error messages and logs (`db.example:5432`).
    pub fn redacted_target(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) => format!(
                "{}:{}",
                u.host_str().unwrap_or("localhost"),
                u.port_or_known_default().unwrap_or(0)
            ),
            Err(_) => "<unparseable url>".to_owned(),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    /// `/metrics` is served here, off the API port, so callers of the API never reach it.
    pub metrics_listen: SocketAddr,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub server: ServerConfig,
    pub registry: RegistryConfig,
    pub jobs: JobsConfig,
}

/// Recurring jobs, enqueued by every `kybctl worker` (each tick once, however many run).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    pub schedules: Vec<ScheduleConfig>,
}

impl Default for JobsConfig {
    /// The industry report, materialised every hour.
    fn default() -> Self {
        Self {
            schedules: vec![ScheduleConfig {
                name: "industry-report".into(),
                cron: "0 * * * *".into(),
                kind: crate::jobs::JobKind::IndustryReport,
                priority: 0,
            }],
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Names the schedule in each tick's job key: renaming a schedule makes its next tick new.
    pub name: String,
    /// Five fields (minute hour day-of-month month weekday), or six with seconds first.
    pub cron: String,
    pub kind: crate::jobs::JobKind,
    #[serde(default)]
    pub priority: i16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            auth: AuthConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            cache: CacheConfig::default(),
            server: ServerConfig::default(),
            registry: RegistryConfig::default(),
            jobs: JobsConfig::default(),
        }
    }
}

/// Who may call the API. `kybctl serve` refuses to start with none of it unless told
/// `insecure_no_auth`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Serve every caller without credentials: for the demo and local work only.
    pub insecure_no_auth: bool,
    /// Files of hashed API keys (`kybctl auth new-key` makes entries), usually mounted Secrets;
    /// re-read when they change.
    pub api_key_files: Vec<PathBuf>,
    /// Bearer JWTs from an OpenID Connect issuer.
    pub jwt: Option<JwtConfig>,
    pub rate_limit: RateLimitConfig,
}

impl AuthConfig {
    pub fn configured(&self) -> bool {
        !self.api_key_files.is_empty() || self.jwt.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The issuer's JSON Web Key Set.
    pub jwks_url: url::Url,
    /// Must be among the token's `aud`.
    pub audience: String,
    /// How often the key set is fetched again (also on a token signed by a key not yet seen).
    #[serde(default = "JwtConfig::default_refresh", with = "humantime_serde")]
    pub refresh_every: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "JwtConfig::default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

impl JwtConfig {
    fn default_refresh() -> Duration {
        Duration::from_secs(300)
    }
    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }
}

/// Requests per second per client (an API key's client, a token's client id); 0 turns it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    /// Requests a client may send at once above the steady rate.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 2000,
            burst: 4000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Primary DSN of the default (single) shard.
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub replica_urls: Vec<Secret>,
    /// One replica DSN per file (mounted Secret keys); when given, they replace `replica_urls`.
    pub replica_url_files: Vec<PathBuf>,
    /// Reporting queries; defaults to the first replica, else the primary.
    pub analytics_url: Option<Secret>,
    pub analytics_url_file: Option<PathBuf>,
    pub pool: PoolConfig,
    pub read_your_writes: ReadYourWrites,
    pub sharding: ShardingConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a request waits for a connection before the database counts as unavailable.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// The primary pool for writes without a durability wait (default: a quarter of the main pool).
    pub relaxed_max_connections: Option<u32>,
    /// The analytics pool (default: a quarter of the main pool). The operator sets both from the
    /// database's connection budget.
    pub analytics_max_connections: Option<u32>,
    /// Of `max_connections`, how many the API service keeps for one-statement requests (a merchant
    /// read by id, a creation), which it hands back without sqlx's ping (`service::db::direct`).
    /// Default: half; 0 turns it off; the main pool always keeps [`MIN_MAIN_POOL`]. Not an extra
    /// pool: the connections come out of the main one, so a pod's total stays `max_connections`.
    pub direct_max_connections: Option<u32>,
}

/// The fewest connections a process's main pool may have: one is held for as long as the process
/// runs by the cache-invalidation listener (`LISTEN` needs its own session), and transactions, the
/// primary's probe and a worker's claims need at least one more.
pub const MIN_MAIN_POOL: u32 = 2;

impl Default for PoolConfig {
    fn default() -> Self {
        // The plan's figures: 100 open, 25 idle, 10 min lifetime, 5 min idle.
        Self {
            max_connections: 100,
            min_connections: 25,
            max_lifetime: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            acquire_timeout: Duration::from_secs(3),
            relaxed_max_connections: None,
            analytics_max_connections: None,
            direct_max_connections: None,
        }
    }
}

/// When a read that follows a write may go to a replica.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReadYourWrites {
    /// Use a replica only once it has replayed the write's WAL position (else the primary).
    Lsn {
        #[serde(with = "humantime_serde", default = "default_ryw_window")]
        remember_for: Duration,
    },
    /// Send reads of a recently written record to the primary for a fixed window.
    PrimaryWindow {
        #[serde(with = "humantime_serde")]
        window: Duration,
    },
    /// Replicas may serve stale reads.
    Off,
}

fn default_ryw_window() -> Duration {
    Duration::from_secs(30)
}

impl Default for ReadYourWrites {
    fn default() -> Self {
        Self::Lsn {
            remember_for: default_ryw_window(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShardingStrategy {
    /// FNV-1a (32-bit) of the key modulo the shard count, as in the plan.
    #[default]
    Hash,
    /// Each shard holds keys from its `range_from` (inclusive) up to the next shard's.
    Range,
    /// Keys listed under a shard live there; unlisted keys fall back to hashing.
    Directory,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardingConfig {
    pub strategy: ShardingStrategy,
    /// Empty: one shard made of `database.url` / `replica_urls`.
    pub shards: Vec<ShardConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: String,
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    #[serde(default)]
    pub replica_urls: Vec<Secret>,
    #[serde(default)]
    pub replica_url_files: Vec<PathBuf>,
    /// Range strategy: this shard holds keys `>= from` (lexicographic on the key's text).
    #[serde(default)]
    pub range_from: Option<String>,
    /// Directory strategy: keys pinned to this shard.
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    /// Redis Cluster seed nodes; when set, `url` is ignored.
    pub cluster_nodes: Vec<Secret>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            cluster_nodes: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries held in process, an eighth of them kept for listing pages (see `cache::l1_shares`).
    pub l1_max_entries: u64,
    #[serde(with = "humantime_serde")]
    pub l1_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub l2_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub l3_ttl: Duration,
    /// Prepended to every L2/L3 key, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            l1_max_entries: 1000,
            l1_ttl: Duration::from_secs(300),
            l2_ttl: Duration::from_secs(3600),
            l3_ttl: Duration::from_secs(1800),
            key_prefix: "kyb:".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    /// The body limit of `POST /v1/merchants:import` (NDJSON; each line is held to
    /// `max_body_bytes`).
    pub max_import_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            max_import_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// External business registry; off when unset.
    pub base_url: Option<url::Url>,
    /// Bearer token sent to the registry.
    pub token: Option<Secret>,
    /// File holding the token (a mounted Secret); wins over `token`.
    pub token_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retries: u32,
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            token: None,
            token_file: None,
            timeout: Duration::from_secs(2),
            retries: 2,
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            half_open_max_calls: 3,
        }
    }
}

/// The `KYB_*` / flag layer. `None` means "not given", so the file's value stands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// YAML configuration file.
    #[arg(long, env = "KYB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "KYB_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Primary PostgreSQL DSN.
    #[arg(long, env = "KYB_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the primary DSN (a mounted Secret).
    #[arg(long, env = "KYB_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Read replica DSN; repeat for several (env: comma-separated).
    #[arg(
        long = "replica-url",
        env = "KYB_REPLICA_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub replica_urls: Vec<String>,
    /// Analytics DSN.
    #[arg(long, env = "KYB_ANALYTICS_URL", hide_env_values = true)]
    pub analytics_url: Option<String>,
    /// Redis URL (redis://host:port/db).
    #[arg(long, env = "KYB_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// File holding the Redis URL.
    #[arg(long, env = "KYB_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// External business registry base URL.
    #[arg(long, env = "KYB_REGISTRY_URL")]
    pub registry_url: Option<url::Url>,
    /// Prefix for shared (Redis, database) cache keys.
    #[arg(long, env = "KYB_CACHE_KEY_PREFIX")]
    pub cache_key_prefix: Option<String>,
    /// Address `/metrics` is served on (not the API's).
    #[arg(long, env = "KYB_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// File of hashed API keys; repeat for several (env: comma-separated).
    #[arg(
        long = "api-keys-file",
        env = "KYB_API_KEYS_FILES",
        value_delimiter = ','
    )]
    pub api_keys_files: Vec<PathBuf>,
    /// Serve without authentication (the demo, local work). Logged loudly.
    #[arg(long, env = "KYB_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Secret>, ConfigError> {
    paths.iter().map(|p| Secret::from_file(p)).collect()
}

impl Config {
    /// Builds the effective configuration: defaults < file < environment < flags, then resolves secret files.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides);
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(listen) = o.listen {
            self.listen = listen;
        }
        let db = &mut self.database;
        if let Some(url) = &o.database_url {
            db.url = Some(Secret::new(url));
        }
        if let Some(path) = &o.database_url_file {
            db.url_file = Some(path.clone());
        }
        if !o.replica_urls.is_empty() {
            db.replica_urls = o
                .replica_urls
                .iter()
                .filter(|u| !u.trim().is_empty())
                .map(Secret::new)
                .collect();
        }
        if let Some(url) = &o.analytics_url {
            db.analytics_url = Some(Secret::new(url));
        }
        if let Some(url) = &o.redis_url {
            self.redis.url = Some(Secret::new(url));
        }
        if let Some(path) = &o.redis_url_file {
            self.redis.url_file = Some(path.clone());
        }
        if let Some(url) = &o.registry_url {
            self.registry.base_url = Some(url.clone());
        }
        if let Some(prefix) = &o.cache_key_prefix {
            self.cache.key_prefix = prefix.clone();
        }
        if let Some(addr) = o.metrics_listen {
            self.metrics_listen = addr;
        }
        if !o.api_keys_files.is_empty() {
            self.auth.api_key_files = o.api_keys_files.clone();
        }
        if o.insecure_no_auth {
            self.auth.insecure_no_auth = true;
        }
    }

    /// A `*_file` wins over the inline value: it is how Kubernetes Secrets arrive.
    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        let db = &mut self.database;
        if let Some(path) = &db.url_file {
            db.url = Some(Secret::from_file(path)?);
        }
        if !db.replica_url_files.is_empty() {
            db.replica_urls = read_all(&db.replica_url_files)?;
        }
        if let Some(path) = &db.analytics_url_file {
            db.analytics_url = Some(Secret::from_file(path)?);
        }
        for shard in &mut db.sharding.shards {
            if let Some(path) = &shard.url_file {
                shard.url = Some(Secret::from_file(path)?);
            }
            if !shard.replica_url_files.is_empty() {
                shard.replica_urls = read_all(&shard.replica_url_files)?;
            }
        }
        if let Some(path) = &self.redis.url_file {
            self.redis.url = Some(Secret::from_file(path)?);
        }
        if let Some(path) = &self.registry.token_file {
            self.registry.token = Some(Secret::from_file(path)?);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let pool = &self.database.pool;
        if pool.max_connections < MIN_MAIN_POOL || pool.min_connections > pool.max_connections {
            return Err(ConfigError::Invalid(format!(
                "database.pool: min_connections ({}) must be <= max_connections ({}), and \
                 max_connections at least {MIN_MAIN_POOL} (one listens for cache invalidations)",
                pool.min_connections, pool.max_connections
            )));
        }
        if self.cache.l1_max_entries == 0 {
            return Err(ConfigError::Invalid(
                "cache.l1_max_entries must be > 0".into(),
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be > 0".into(),
            ));
        }
        if self.server.max_import_bytes < self.server.max_body_bytes {
            return Err(ConfigError::Invalid(
                "server.max_import_bytes must be >= server.max_body_bytes (an import of one merchant)"
                    .into(),
            ));
        }
        if self.metrics_listen == self.listen {
            return Err(ConfigError::Invalid(
                "metrics_listen must differ from listen: /metrics is kept off the API port".into(),
            ));
        }
        for shard in &self.database.sharding.shards {
            if shard.url.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "database.sharding.shards[{}]: url or url_file is required",
                    shard.id
                )));
            }
        }
        Ok(())
    }

    /// The primary DSN of the single-shard configuration, or the first shard's.
    pub fn require_database_url(&self) -> Result<&Secret, ConfigError> {
        self.database
            .url
            .as_ref()
            .or_else(|| {
                self.database
                    .sharding
                    .shards
                    .first()
                    .and_then(|s| s.url.as_ref())
            })
            .ok_or_else(|| {
                ConfigError::Invalid(
                    "no database: set --database-url, KYB_DATABASE_URL or database.url".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_plans() {
        let c = Config::default();
        assert_eq!(c.database.pool.max_connections, 100);
        assert_eq!(c.database.pool.min_connections, 25);
        assert_eq!(c.cache.l1_max_entries, 1000);
        assert_eq!(c.cache.l2_ttl, Duration::from_secs(3600));
        assert_eq!(c.cache.l3_ttl, Duration::from_secs(1800));
        assert_eq!(c.server.read_timeout, Duration::from_secs(15));
        assert_eq!(c.registry.circuit_breaker.failure_threshold, 5);
    }

    #[test]
    fn file_then_flags() {
        let mut c = Config::from_yaml(
            "listen: 127.0.0.1:9000\ndatabase:\n  url: postgres://file/db\n  pool: {max_connections: 10, min_connections: 2}\ncache: {l1_ttl: 10s}\n",
        )
        .unwrap();
        assert_eq!(c.cache.l1_ttl, Duration::from_secs(10));
        c.apply(&Overrides {
            database_url: Some("postgres://flag/db".into()),
            replica_urls: vec!["postgres://r1/db".into(), "".into()],
            ..Default::default()
        });
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(
            c.database.url.as_ref().unwrap().expose(),
            "postgres://flag/db"
        );
        assert_eq!(c.database.replica_urls.len(), 1);
        assert_eq!(c.database.pool.max_connections, 10);
    }

    #[test]
    fn internationalised_registry_hosts_are_read_as_punycode() {
        // url's IDNA back end is the one pinned in Cargo.toml (`idna_adapter`); its 1.0 stream
        // would refuse this host, and ICU4X's (1.2) would read it alike.
        let c = Config::from_yaml("registry: {base_url: 'https://bücher.example/v1'}\n").unwrap();
        let url = c.registry.base_url.unwrap();
        assert_eq!(url.host_str(), Some("xn--bcher-kva.example"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_yaml("databse: {}\n").unwrap_err().to_string();
        assert!(err.contains("databse"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("postgres://u:hunter2@db.example:5432/x");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.redacted_target(), "db.example:5432");
    }

    #[test]
    fn secret_files_win() {
        let dir = std::env::temp_dir().join(format!("kyb-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("url");
        std::fs::write(&f, "postgres://secret/db\n").unwrap();
        let mut c = Config::default();
        c.apply(&Overrides {
            database_url: Some("postgres://inline/db".into()),
            database_url_file: Some(f),
            ..Default::default()
        });
        c.resolve_secret_files().unwrap();
        assert_eq!(c.database.url.unwrap().expose(), "postgres://secret/db");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_pool_is_invalid() {
        let c = Config::from_yaml("database: {pool: {max_connections: 2, min_connections: 5}}")
            .unwrap();
        assert!(c.validate().is_err());
        // One connection would be the cache-invalidation listener's, and nothing else could run.
        let c = Config::from_yaml("database: {pool: {max_connections: 1, min_connections: 1}}")
            .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        let c = Config::from_yaml("database: {pool: {max_connections: 2, min_connections: 1}}")
            .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn ryw_modes_parse() {
        let c =
            Config::from_yaml("database: {read_your_writes: {mode: primary_window, window: 2s}}")
                .unwrap();
        assert_eq!(
            c.database.read_your_writes,
            ReadYourWrites::PrimaryWindow {
                window: Duration::from_secs(2)
            }
        );
        let c = Config::from_yaml("database: {read_your_writes: {mode: off}}").unwrap();
        assert_eq!(c.database.read_your_writes, ReadYourWrites::Off);
    }
}
