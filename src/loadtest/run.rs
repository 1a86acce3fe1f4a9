//! The load test itself: goose schedules the virtual users (count, ramp-up, run time); our one
//! transaction draws each request's type by the scenario's weights, sends it on the user's own
//! connection ([`client`](super::client)) and records it in our own histograms.
//!
//! goose is configured only through `GooseAttack::initialize_with_config(GooseConfiguration::default())`
//! and `set_default`, never `initialize()`, which would parse kybctl's own argv as goose flags. Its
//! metrics are switched off (`NoMetrics`): we measure every request ourselves, and its per-request
//! metric messages would cost generator CPU. Its request throttle is not used either: it waits inside
//! `GooseUser::request` (which we bypass, see [`send`]), so our own [`Pacer`] holds the rate.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use goose::client::GooseClientBuilder;
use goose::config::{GooseConfiguration, GooseDefault, GooseDefaultType};
use goose::goose::{
    GooseUser, Scenario as GooseScenario, Transaction, TransactionError, TransactionFunction,
};
use goose::GooseAttack;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use super::client::{ClientError, Connection, Target};
use super::recorder::{
    effective_due, CacheHit, Outcome, Pacer, Phase, Recorder, Recorders, Sample,
};
use super::scenario::{business, RequestType, Scenario};
use super::summary::{build_result, cpu_share, process_cpu_time, GeneratorFacts};
use crate::slo::result::LoadTestResult;

/// Merchant ids one user keeps for reads and risk assessments; new merchants replace old ones.
const MAX_MERCHANTS_PER_USER: usize = 64;
/// How much longer than the window goose runs: its run time starts when it has launched every user,
/// the window when their set-up is done too.
const SETUP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port`, without a trailing slash.
    pub target: String,
    pub users: usize,
    /// How long every user runs once all have started.
    pub duration: Duration,
    /// Time over which the users start; zero starts them all at once.
    pub ramp_up: Duration,
    /// Requests per second for all users together; `None` runs closed-loop, as fast as the users go.
    pub rate: Option<f64>,
    pub scenario: Scenario,
    pub request_timeout: Duration,
    /// Seeds each user's random choices, so two runs send the same traffic.
    pub seed: u64,
    pub progress: bool,
    /// Sent as `Authorization: Bearer …` on every request (an API key or a token).
    pub credential: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach {target}: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("the load generator failed: {0}")]
    Goose(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the run measured, and the result file made from it.
#[derive(Debug)]
pub struct RunOutcome {
    pub result: LoadTestResult,
    pub recorder: Recorder,
    pub facts: GeneratorFacts,
}

impl RunOutcome {
    /// Failed requests per request type in the steady window, for the tables (the result file has
    /// only the total).
    pub fn errors_by_type(&self) -> super::report::TypeErrors {
        self.recorder
            .by_type
            .iter()
            .map(|(t, s)| (t.name().to_owned(), s.errors()))
            .collect()
    }
}

/// State every user shares: configuration, the pacer, the run's measurements.
struct Shared {
    scenario: Scenario,
    start: Instant,
    /// The earliest the measured window may open: the end of the ramp-up.
    ramp_end: Instant,
    duration: Duration,
    rate: Option<f64>,
    users: usize,
    /// Users whose set-up (on_start) has finished.
    ready: AtomicUsize,
    /// Set when the last user is ready (and not before the ramp-up's end).
    window: OnceLock<Window>,
    window_open: Notify,
    seed: u64,
    /// Requests finished so far, for the progress bar.
    sent: AtomicU64,
    /// Distinguishes new businesses across users.
    unique: AtomicU64,
    recorders: Recorders,
    /// Every user's connection is made to it.
    target: Target,
}

/// The measured window, and the schedule that starts with it.
///
/// It opens once every user has started and finished its set-up, not at a fixed time: goose launches
/// users one timer tick at a time, so with a short ramp-up the last ones (and their connections) arrive
/// hundreds of milliseconds late, and slots due meanwhile were served late and judged as steady state
/// (the start-up stall issue 9 traced: 256 users at 2,000/s had p50 94 ms in the first second and
/// ~1 ms after).
struct Window {
    from: Instant,
    until: Instant,
    pacer: Option<Pacer>,
}

impl Shared {
    /// Counts a user in; the last one opens the window.
    fn user_ready(&self) {
        if self.ready.fetch_add(1, Ordering::AcqRel) + 1 == self.users {
            let from = Instant::now().max(self.ramp_end);
            let _ = self.window.set(Window {
                from,
                until: from + self.duration,
                // The schedule starts with the window: nothing due before it is replayed into it.
                pacer: self.rate.map(|r| Pacer::new(r, from)),
            });
            self.window_open.notify_waiters();
        }
    }

    /// The window, once open.
    async fn window(&self) -> &Window {
        loop {
            let opened = self.window_open.notified();
            if let Some(w) = self.window.get() {
                return w;
            }
            opened.await;
        }
    }
}

/// One virtual user's own state (goose session data). (goose requires Clone; it is never cloned
/// during a run.)
#[derive(Clone)]
struct UserState {
    merchants: Vec<String>,
    rng: StdRng,
    /// Taken out while a request is on it.
    connection: Option<Connection>,
}

/// `GET /health` once, so an unreachable target is a clear error before any load (exit 2), not a run
/// full of transport errors. This request is not part of the result.
pub async fn precheck(target: &Target, url: &str) -> Result<(), RunError> {
    Connection::new(target.clone())
        .send(Method::GET, "/health", None)
        .await
        .map_err(|e| RunError::Unreachable {
            target: url.to_owned(),
            cause: root_cause(&e),
        })?;
    Ok(())
}

/// The innermost cause (`connection refused`), not reqwest's wrapper ("error sending request for ...").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let text = cur.to_string();
    // io errors read "Connection refused (os error 111)"; the os error number helps nobody.
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().collect::<String>() + chars.as_str(),
        None => text,
    }
}

pub async fn run(cfg: RunConfig) -> Result<RunOutcome, RunError> {
    let target = Target::new(&cfg.target, cfg.credential.as_deref(), cfg.request_timeout)?;
    precheck(&target, &cfg.target).await?;

    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let start = Instant::now();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shared = Arc::new(Shared {
        scenario: cfg.scenario.clone(),
        start,
        ramp_end: start + cfg.ramp_up,
        duration: cfg.duration,
        rate: cfg.rate,
        users: cfg.users,
        ready: AtomicUsize::new(0),
        window: OnceLock::new(),
        window_open: Notify::new(),
        seed: cfg.seed,
        sent: AtomicU64::new(0),
        unique: AtomicU64::new(0),
        recorders: Recorders::new(4 * cores),
        target,
    });

    let attack = attack(&cfg, &shared).map_err(|e| RunError::Goose(e.to_string()))?;
    let progress = progress_bar(&cfg, &shared, start);
    let cpu_before = process_cpu_time();
    let outcome = (*attack).execute().await;
    let elapsed = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    outcome.map_err(|e| RunError::Goose(e.to_string()))?;

    let recorder = shared.recorders.merged();
    // The window may have been cut short (Ctrl-C, or a set-up longer than the grace below) or never
    // opened (every user must finish its set-up).
    let ended = Instant::now();
    let steady_secs = shared
        .window
        .get()
        .map(|w| w.until.min(ended).saturating_duration_since(w.from))
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-9);
    let facts = GeneratorFacts {
        requested_rps: cfg.rate,
        achieved_rps: recorder.steady_requests() as f64 / steady_secs,
        cpu_share: cpu_share(cpu, elapsed, cores),
    };
    let result = build_result(&recorder, started_at, steady_secs, elapsed, &facts);
    Ok(RunOutcome {
        result,
        recorder,
        facts,
    })
}

fn attack(cfg: &RunConfig, shared: &Arc<Shared>) -> Result<Box<GooseAttack>, goose::GooseError> {
    let mut scenario = GooseScenario::new(&cfg.scenario.name);
    if let Some([min, max]) = cfg.scenario.think_time_ms {
        scenario =
            scenario.set_wait_time(Duration::from_millis(min), Duration::from_millis(max))?;
    }
    scenario =
        scenario.register_transaction(Transaction::new(on_start(shared.clone())).set_on_start());
    // One transaction that draws the request type by weight each time (see Scenario::pick); goose's
    // own weighting repeats one fixed list, the same for every user.
    scenario = scenario.register_transaction(
        Transaction::new(mixed_request(shared.clone())).set_name(&cfg.scenario.name),
    );
    // Users per second: a zero ramp-up starts them all within a millisecond.
    let ramp_secs = cfg.ramp_up.as_secs_f64();
    let increase_rate = if ramp_secs > 0.0 {
        cfg.users as f64 / ramp_secs
    } else {
        cfg.users as f64 * 1000.0
    };
    GooseAttack::initialize_with_config(GooseConfiguration::default())?
        // One reqwest client for every user, built once. Our requests never use it (`send` drives
        // each user's own connection), but by default goose builds one per user, and each build
        // parses the system's root certificates: at 1,000 users that was the generator's largest
        // cost during the ramp-up (perf, BENCHMARKS.md), on the cores the service needs.
        .set_client_builder_without_cookies(GooseClientBuilder::new().without_cookies())?
        .register_scenario(scenario)
        .set_default(GooseDefault::Host, cfg.target.as_str())?
        .set_default(GooseDefault::Users, cfg.users)?
        .set_default(
            GooseDefault::IncreaseRate,
            format!("{increase_rate}").as_str(),
        )?
        // goose's run time starts once it has launched every user; the window opens when their set-up
        // is done too, a little later, so goose runs on for a grace period to let the window close.
        .set_default(
            GooseDefault::RunTime,
            (cfg.duration + SETUP_GRACE).as_secs().max(1) as usize,
        )?
        .set_default(GooseDefault::NoMetrics, true)?
        .set_default(GooseDefault::NoPrintMetrics, true)?
        .set_default(GooseDefault::Quiet, 1)?
        // No controllers: they would listen on fixed ports, and two runs at once would collide.
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)
}

/// Each user's first transaction: its own state, then the merchants its reads will use.
fn on_start(shared: Arc<Shared>) -> TransactionFunction {
    Arc::new(move |user| {
        let shared = shared.clone();
        Box::pin(async move {
            let seed = shared.seed ^ (user.weighted_users_index as u64).wrapping_mul(0x9E37_79B9);
            user.set_session_data(UserState {
                merchants: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                connection: Some(Connection::new(shared.target.clone())),
            });
            let mut setup = Ok(());
            for _ in 0..shared.scenario.seed_merchants_per_user {
                setup = send(user, &shared, RequestType::MerchantCreate, Purpose::SetUp).await;
                if setup.is_err() {
                    break;
                }
            }
            // Counted whatever happened: a user whose set-up failed still sends (creating merchants
            // as it goes), and the window must not wait for it forever.
            shared.user_ready();
            setup
        })
    })
}

fn mixed_request(shared: Arc<Shared>) -> TransactionFunction {
    Arc::new(move |user| {
        let shared = shared.clone();
        Box::pin(async move {
            let t = {
                let state = user
                    .get_session_data_mut::<UserState>()
                    .expect("on_start sets the user's state");
                shared.scenario.pick(&mut state.rng)
            };
            send(user, &shared, t, Purpose::Mix).await
        })
    })
}

/// Why a request is sent: the users' set-up is never judged, whenever it happens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    SetUp,
    Mix,
}

/// Sends one request of type `t` (a merchant creation instead when a read has no merchant yet) when
/// the schedule says it is due, times it to the last body byte from then and from the moment it was
/// actually sent, and records it.
async fn send(
    user: &mut GooseUser,
    shared: &Shared,
    t: RequestType,
    purpose: Purpose,
) -> Result<(), Box<TransactionError>> {
    let (t, path, body) = {
        let state = user
            .get_session_data_mut::<UserState>()
            .expect("on_start sets the user's state");
        let t = if t.needs_merchant() && state.merchants.is_empty() {
            RequestType::MerchantCreate
        } else {
            t
        };
        let pick = |s: &mut UserState| {
            let i = s.rng.random_range(0..s.merchants.len());
            s.merchants[i].clone()
        };
        match t {
            RequestType::Classify | RequestType::MerchantCreate => {
                let unique = shared.unique.fetch_add(1, Ordering::Relaxed);
                let mix = if t == RequestType::Classify {
                    shared.scenario.classify.clone()
                } else {
                    // Every creation is a new merchant.
                    super::scenario::ClassifyMix {
                        repeat_share: 0.0,
                        hot_businesses: 0,
                    }
                };
                let body = business(&mix, &mut state.rng, unique);
                let path = if t == RequestType::Classify {
                    "/v1/classifications"
                } else {
                    "/v1/merchants"
                };
                let body = serde_json::to_vec(&body).expect("a JSON value serialises");
                (t, path.to_owned(), Some(Bytes::from(body)))
            }
            RequestType::MerchantRead => (t, format!("/v1/merchants/{}", pick(state)), None),
            // The assessment takes no body: the merchant's own record is assessed.
            RequestType::RiskAssess => (
                t,
                format!("/v1/merchants/{}/risk-assessments", pick(state)),
                None,
            ),
            RequestType::Health => (t, "/health".to_owned(), None),
        }
    };
    let method = match t {
        RequestType::Classify | RequestType::MerchantCreate | RequestType::RiskAssess => {
            Method::POST
        }
        RequestType::MerchantRead | RequestType::Health => Method::GET,
    };

    let window = match purpose {
        Purpose::Mix => Some(shared.window().await),
        Purpose::SetUp => None,
    };
    let due = match window.and_then(|w| w.pacer.as_ref()) {
        Some(pacer) => {
            let slot = pacer.next_slot();
            tokio::time::sleep_until(slot.into()).await;
            Some(slot)
        }
        None => None,
    };
    let started = Instant::now();
    let due = due.map_or(started, |slot| effective_due(slot, started));
    // On the user's own connection, not `GooseUser::request`: that builds goose's per-request metric
    // records (several string copies) even with metrics off, and sends with goose's reqwest client
    // (see `client` for what that one costs).
    let mut connection = user
        .get_session_data_mut::<UserState>()
        .expect("on_start sets the user's state")
        .connection
        .take()
        .expect("a user sends one request at a time");
    let answer = connection.send(method, &path, body).await;
    let (outcome, bytes) = match answer {
        Ok(r) => {
            let code = r.status().as_u16();
            let cache = r
                .headers()
                .get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .and_then(CacheHit::from_header);
            (Outcome::Status { code, cache }, Some(r.into_body()))
        }
        Err(_) => (Outcome::Transport, None),
    };
    let done = Instant::now();
    let steady = window.is_some_and(|w| due >= w.from && due < w.until);
    shared.recorders.record(
        user.weighted_users_index,
        &Sample {
            t,
            phase: if steady { Phase::Steady } else { Phase::Warmup },
            second: due.saturating_duration_since(shared.start).as_secs() as usize,
            response: done - due,
            service: done - started,
            outcome,
            failed: match outcome {
                Outcome::Status { code, .. } => shared.scenario.fails(code),
                Outcome::Transport => true,
            },
        },
    );

    let state = user
        .get_session_data_mut::<UserState>()
        .expect("on_start sets the user's state");
    state.connection = Some(connection);
    if t == RequestType::MerchantCreate {
        if let (Outcome::Status { code: 201, .. }, Some(b)) = (outcome, &bytes) {
            #[derive(serde::Deserialize)]
            struct Created {
                id: String,
            }
            if let Ok(c) = serde_json::from_slice::<Created>(b) {
                if state.merchants.len() >= MAX_MERCHANTS_PER_USER {
                    let i = state.rng.random_range(0..state.merchants.len());
                    state.merchants[i] = c.id;
                } else {
                    state.merchants.push(c.id);
                }
            }
        }
    }
    shared.sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Elapsed of the planned time and requests so far, on stderr; none when stderr is not a terminal.
fn progress_bar(
    cfg: &RunConfig,
    shared: &Arc<Shared>,
    start: Instant,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    if !cfg.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let planned = (cfg.ramp_up + cfg.duration).as_secs().max(1);
    let bar = indicatif::ProgressBar::new(planned);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:30}] {pos}/{len} s  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("loadtest {}", cfg.target));
    let (b, s) = (bar.clone(), shared.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let secs = start.elapsed().as_secs_f64();
            let sent = s.sent.load(Ordering::Relaxed);
            b.set_position((secs as u64).min(planned));
            b.set_message(format!(
                "{sent} requests, {:.0} rps",
                sent as f64 / secs.max(1e-3)
            ));
        }
    });
    Some((bar, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_short() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        assert_eq!(root_cause(&io), "connection refused");
    }

    fn shared(users: usize, ramp_up: Duration) -> Shared {
        let start = Instant::now();
        Shared {
            scenario: Scenario::load("trivial").unwrap(),
            start,
            ramp_end: start + ramp_up,
            duration: Duration::from_secs(10),
            rate: Some(1000.0),
            users,
            ready: AtomicUsize::new(0),
            window: OnceLock::new(),
            window_open: Notify::new(),
            seed: 1,
            sent: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            recorders: Recorders::new(1),
            target: Target::new("http://127.0.0.1:1", None, Duration::from_secs(1)).unwrap(),
        }
    }

    #[tokio::test]
    async fn the_window_and_its_schedule_open_when_the_last_user_is_ready() {
        let s = Arc::new(shared(3, Duration::ZERO));
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.window().await.from }
        });
        s.user_ready();
        s.user_ready();
        tokio::task::yield_now().await;
        assert!(s.window.get().is_none(), "two of three users ready");
        assert!(!waiter.is_finished());
        let before = Instant::now();
        s.user_ready();
        let from = waiter.await.unwrap();
        assert!(from >= before);
        let w = s.window.get().unwrap();
        assert_eq!(w.until - w.from, Duration::from_secs(10));
        // The first slot is the window's opening: nothing is due before it.
        assert_eq!(w.pacer.as_ref().unwrap().next_slot(), w.from);
    }

    #[tokio::test]
    async fn the_window_never_opens_before_the_ramp_up_ends() {
        let s = shared(1, Duration::from_secs(3));
        s.user_ready();
        assert_eq!(s.window().await.from, s.ramp_end);
    }
}
