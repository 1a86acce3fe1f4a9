//! The HTTP server loop: hyper with the plan's timeouts (read 15 s, write 15 s, idle 60 s) and a
//! graceful shutdown that stops accepting, lets in-flight requests finish, then closes.
//!
//! Shutdown never closes a keep-alive connection under a client that may be sending on it: during the
//! drain every response says `Connection: close` (the client learns from the response that the
//! connection ends), and a connection is closed only once it has been quiet for [`DRAIN_QUIET`].
//! Closing an idle-looking connection at once races the client's next request, which then fails as a
//! reset connection: the one failure in 15,000 requests a blue-green switch showed on a real node.
//!
//! `axum::serve` offers neither header-read nor idle timeouts, hence this small loop over hyper-util.

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::HttpBody;
use axum::http::{Request, Response};
use axum::BoxError;
use bytes::Bytes;
use futures::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::{MapResponseLayer, Oneshot};
use tower::{Layer, Service, ServiceExt};

use crate::config::ServerConfig;

/// How often each connection checks for shutdown and idleness.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// During shutdown, how long a connection must have moved no bytes before it is closed.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// What a connection's reads and writes have moved, for its timeouts: counters rather than
/// timestamps, since reading the clock on every read and write was a measurable cost. Only the
/// connection's own task writes them, so a load and a store need no read-modify-write.
#[derive(Default)]
struct Traffic {
    /// Reads that moved bytes: the header-read timeout starts at the first one of a head.
    reads: AtomicU64,
    /// Writes that moved bytes: with the reads, what the idle timeout watches.
    writes: AtomicU64,
    /// Whether hyper has waited for this connection's first head yet (see [`HeadTimer`]). Only the
    /// connection's own task touches it: atomic because a hyper timer must be `Sync`, not because
    /// it is shared.
    first_head_armed: AtomicBool,
}

impl Traffic {
    fn bump(counter: &AtomicU64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn moves(&self) -> u64 {
        let reads = self.reads.load(Ordering::Relaxed);
        reads.wrapping_add(self.writes.load(Ordering::Relaxed))
    }
}

pin_project_lite::pin_project! {
    /// A TCP stream that counts its reads and writes ([`Traffic`]).
    struct Tracked {
        #[pin]
        inner: TcpStream,
        traffic: Arc<Traffic>,
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            Traffic::bump(&this.traffic.reads);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Traffic::bump(&this.traffic.writes);
        }
        r
    }
    // Vectored writes passed through: without them hyper copies each body into its header buffer
    // before writing (its "flatten" strategy), a copy per response the bare server does not make.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Traffic::bump(&this.traffic.writes);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 header-read timer (the plan's read timeout): started by a head's first byte and
/// checked on the connection's tick. One per connection.
///
/// hyper arms its header timer as soon as it waits for a head, the wait for a keep-alive
/// connection's next request included. With tokio's timer that closed every keep-alive connection
/// left idle for the read timeout (15 s) rather than the idle timeout (60 s), and a client reusing
/// one then raced the close; and each arming was an entry registered in, then removed from, the
/// runtime's timer wheel under its lock (~700 instructions per request, 3.5 % of a `GET /health`,
/// BENCHMARKS.md). Here a head's deadline runs from the first byte read after hyper starts waiting
/// for it (from the connection's start for its first head, as Go's `ReadHeaderTimeout`); until then
/// the idle timeout governs. A `TickSleep` registers nothing: it compares the clock with its
/// deadline whenever hyper polls it, and every connection's task is woken by its own tick (at most
/// [`CHECK_EVERY`] apart, in [`serve`]) and polls the connection, so a late head is cut off within a
/// tick of its deadline, the idle timeout's resolution.
///
/// Its clock is fixed: [`Timer::now`](hyper::rt::Timer::now) answers `epoch`, the connection's
/// start. hyper's HTTP/1 server reads this timer's clock only to pass `now() + header_read_timeout`
/// back to `sleep_until`, and a `TickSleep` needs only the budget, which the fixed clock hands back
/// exactly: two clock reads per request fewer (a `clock_gettime` costs ~17 ns on this machine kind,
/// `perf`, BENCHMARKS.md).
#[derive(Clone)]
struct HeadTimer {
    traffic: Arc<Traffic>,
    epoch: std::time::Instant,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let first = &self.traffic.first_head_armed;
        // A load and a store rather than a swap (a locked instruction): one task writes it.
        let start = if first.load(Ordering::Relaxed) {
            HeadStart::FirstReadAfter {
                reads: self.traffic.reads.load(Ordering::Relaxed),
                traffic: self.traffic.clone(),
            }
        } else {
            first.store(true, Ordering::Relaxed);
            HeadStart::At(std::time::Instant::now())
        };
        Box::pin(TickSleep {
            budget: duration,
            start,
        })
    }
    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(self.epoch))
    }
    fn now(&self) -> std::time::Instant {
        self.epoch
    }
}

struct TickSleep {
    budget: Duration,
    start: HeadStart,
}

enum HeadStart {
    At(std::time::Instant),
    /// Not yet: when a read after `reads` moves bytes.
    FirstReadAfter {
        traffic: Arc<Traffic>,
        reads: u64,
    },
}

impl std::future::Future for TickSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // No waker kept: the connection's tick polls again (see `HeadTimer`).
        let this = self.get_mut();
        // The clock is read only once a head has started: hyper polls this once per request while
        // it waits for the next head, mostly before any byte of it has arrived.
        match &this.start {
            HeadStart::FirstReadAfter { traffic, reads } => {
                if traffic.reads.load(Ordering::Relaxed) == *reads {
                    return Poll::Pending;
                }
                this.start = HeadStart::At(std::time::Instant::now());
                // Just started: due at once only with no budget at all.
                if this.budget.is_zero() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
            HeadStart::At(start) if start.elapsed() >= this.budget => Poll::Ready(()),
            HeadStart::At(_) => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for TickSleep {}

/// hyper's `Service` over the tower stack: one copy of the stack per connection, called in place.
///
/// hyper-util's `TowerToHyperService` clones the whole stack for every request (hyper calls through
/// `&self`, tower through `&mut self`) and drops the clone once it has called it, so every reference
/// count in the stack (the router's, the app state's, the drain flag's), shared by all connections,
/// was written twice per request from whichever core served it. Here a connection clones the stack
/// once and each request borrows it: hyper calls `call` synchronously from the connection's own
/// task, never from within another call, so the borrow cannot collide. A stack that is not ready at
/// once (no layer of the service's ever waits) is served as hyper-util serves every request, by a
/// clone that waits for readiness with the connection's waker.
struct ConnectionService<S>(RefCell<S>);

impl<S, R> hyper::service::Service<R> for ConnectionService<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Oneshot<S, R>>;

    fn call(&self, req: R) -> Self::Future {
        let mut stack = self.0.borrow_mut();
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
            // Pending, or an error the clone's own readiness check reports.
            _ => Either::Right(stack.clone().oneshot(req)),
        }
    }
}

/// Whether a connection's tick is due, so that its task polls the tick only then rather than on
/// every wake-up: the task is woken for each request, and polling a pending interval re-registers
/// its waker (two atomic read-modify-writes) each time, ~50 ns per request (`perf`, BENCHMARKS.md).
/// The interval is given a waker of its own, [`TickWake`], which marks the tick due and wakes the
/// task.
#[derive(Default)]
struct DueTick(Option<(Arc<TickWake>, Waker)>);

/// The interval's waker: marks the tick due, then wakes the connection's task.
struct TickWake {
    due: AtomicBool,
    task: Waker,
}

impl std::task::Wake for TickWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl DueTick {
    /// A context to poll the tick with, when it is due: woken by the tick since it was last polled,
    /// or never polled yet with this task's waker (at first, and were the task's waker to change).
    fn take(&mut self, task: &Waker) -> Option<Context<'_>> {
        match &self.0 {
            Some((flag, _)) if flag.task.will_wake(task) => {
                // A load first: the store (and the tick's poll) only when it is set. A tick that
                // fires between the two is not lost: the tick is polled right after, and finds
                // itself elapsed.
                if !flag.due.load(Ordering::Acquire) {
                    return None;
                }
                flag.due.store(false, Ordering::Relaxed);
            }
            _ => {
                let flag = Arc::new(TickWake {
                    due: AtomicBool::new(false),
                    task: task.clone(),
                });
                self.0 = Some((flag.clone(), Waker::from(flag)));
            }
        }
        self.0.as_ref().map(|(_, waker)| Context::from_waker(waker))
    }
}

/// Serves `app` on `listener` until `shutdown` fires, then drains for at most `shutdown_grace`.
pub async fn serve<S, B>(
    listener: TcpListener,
    app: S,
    cfg: &ServerConfig,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let tracker = TaskTracker::new();
    let draining = Arc::new(AtomicBool::new(false));
    let app = {
        let draining = draining.clone();
        // A plain flag and a non-boxing layer: this runs on every response.
        MapResponseLayer::new(move |mut res: Response<B>| {
            if draining.load(Ordering::Relaxed) {
                res.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            res
        })
        .layer(app)
    };
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let traffic = Arc::new(Traffic::default());
        let io = Tracked {
            inner: stream,
            traffic: traffic.clone(),
        };
        let service = ConnectionService(RefCell::new(app.clone()));
        // Per connection, for its header timer's counters.
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(HeadTimer {
                traffic: traffic.clone(),
                epoch: std::time::Instant::now(),
            })
            .header_read_timeout(cfg.read_timeout)
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let shutdown = shutdown.clone();
        let idle = cfg.idle_timeout;
        let tick = idle
            .min(cfg.read_timeout)
            .min(CHECK_EVERY)
            .max(Duration::from_millis(10));
        tracker.spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            // Shutdown and idleness are checked on a tick rather than awaited beside the connection:
            // a `cancelled()` future polled on every wake-up of every connection takes the token's
            // shared lock each time. The tick bounds how late a keep-alive connection starts draining.
            // The tick also wakes the connection for `HeadTimer`'s header-read deadline, so it runs
            // until the connection ends, closing or not.
            let mut check = tokio::time::interval(tick);
            let mut due = DueTick::default();
            let mut seen = 0;
            let mut quiet_since = tokio::time::Instant::now();
            let mut closing = false;
            std::future::poll_fn(|cx| {
                if let Some(mut tick_cx) = due.take(cx.waker()) {
                    while let Poll::Ready(now) = check.poll_tick(&mut tick_cx) {
                        if closing {
                            continue;
                        }
                        let n = traffic.moves();
                        if n != seen {
                            seen = n;
                            quiet_since = now;
                        }
                        let quiet = now.duration_since(quiet_since);
                        if quiet >= idle
                            || (shutdown.is_cancelled() && quiet >= DRAIN_QUIET.min(idle))
                        {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
                // After the tick, so a connection told to close is polled to do it at once.
                std::future::Future::poll(conn.as_mut(), cx).map(|_| ())
            })
            .await;
        });
    }
    draining.store(true, Ordering::Relaxed);
    drop(listener);
    tracker.close();
    let open = tracker.len();
    if open > 0 {
        tracing::info!(connections = open, "draining in-flight requests");
    }
    if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?cfg.shutdown_grace, "shutdown grace period over; closing remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl std::task::Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_tick_is_polled_at_first_then_only_once_it_has_woken_the_task() {
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut due = DueTick::default();
        let tick_waker = due.take(&waker).expect("polled at first").waker().clone();
        assert!(due.take(&waker).is_none(), "not due until the tick fires");

        tick_waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the tick wakes the task");
        assert!(due.take(&waker).is_some(), "due once it fired");
        assert!(due.take(&waker).is_none(), "and polled once for it");

        // Polled by a task with another waker: the tick is polled again, to wake that one.
        let other = Arc::new(Task::default());
        let other_waker = Waker::from(other.clone());
        let tick_waker = due.take(&other_waker).expect("a new waker").waker().clone();
        tick_waker.wake();
        assert_eq!(other.0.load(Ordering::Relaxed), 1);
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
    }
}
