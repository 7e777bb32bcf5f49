//! Adaptive request concurrency: how many GDN requests may be in flight, learned from round
//! trips (additive increase, multiplicative decrease, after vector's adaptive concurrency).
//!
//! A fixed number of requests in flight caps throughput at `limit × batch ÷ round trip`: eight
//! requests of 1,000 documents at 50 ms can never pass 160,000 documents/s, and a server that
//! answers 429 gets the same eight requests again after its backoff. The [`Controller`] instead
//! watches every answer:
//!
//! ```text
//!   answers of one window (≈ one round trip)
//!        │
//!        ▼
//!   back-pressure (429/502/503/504, timeout)? ── yes ──▶ limit × decrease_ratio (≥ 1)
//!        │ no
//!   queueing > max(floor, 25 ms), or above the grow band and
//!   > EWMA + k·deviation? ── yes ──▶ limit × decrease_ratio
//!        │ no
//!   limit used and queueing ≤ max(0.75 × floor, 10 ms)? ── yes ──▶ + ⌈√limit⌉ (after slow start)
//!        │ no
//!        └──▶ unchanged
//! ```
//!
//! Queueing is the window's mean RTT minus the floor: the time requests waited behind each
//! other rather than crossed the link. The bands are relative on long links and absolute on
//! short ones. On a long link the limit may grow until requests queue three quarters of the
//! floor and shrinks past one floor: a queue about as long as the link itself, as BBR keeps
//! twice the bandwidth-delay product in flight, so the server always has the next request
//! when it finishes one. (At 30% of the floor a 50 ms link held 22-27 requests while a
//! fixed 32 copied 8% faster: the server's queue ran dry between bursts.) On a short link a
//! server that commits in groups (gdnlite, a database) gets more done with a few requests
//! waiting, and 10-25 ms of waiting is harmless next to the commit-to-GDN latency goal while
//! doubling a 5 ms round trip is not a sign of overload. A latency-sensitive stream that does
//! not fill the limit never queues: the bands only matter when the server is the bottleneck.
//!
//! The limit never exceeds `max_in_flight` (the configured bound) and never drops below 1. The
//! floor is the smallest window mean seen, except that a window with one request in flight
//! (our own load at its least) sets it afresh: a path whose latency rises for good shrinks the
//! limit to 1 once, becomes the new floor, and the limit grows back. A floor that forgot by
//! age instead would take loaded round trips for the floor and let the limit creep up.
//! The first request goes alone and measures the floor unloaded; its answer opens the limit
//! to an initial window of 8 (as TCP's initial window: three doublings fewer). Slow start then
//! lasts until the first decrease: as in TCP, every answer that did not queue adds one request
//! (while at least half the limit is in use), so the limit doubles each round trip wherever
//! window boundaries fall, and a 150 ms link reaches 64 requests in four round trips instead
//! of sixty. (Doubling per window took one and a half round trips per step: a window ends only
//! at an answer a full mean round trip after its first, often the next round's.)
//!
//! The [`Controller`] is pure (time is passed in) so tests drive it with a scripted server;
//! [`RequestLimiter`] wraps it for async callers, one per [`crate::gdn::client::GdnClient`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Queueing (RTT above the floor) that still lets the limit grow, on a short link.
pub const GROW_QUEUEING: Duration = Duration::from_millis(10);

/// Queueing beyond which the limit shrinks, on a short link.
pub const SHRINK_QUEUEING: Duration = Duration::from_millis(25);

/// Queueing above `floor` (seconds) that still lets the limit grow: three quarters of the
/// floor on a long link, [`GROW_QUEUEING`] on a short one.
fn grow_band(floor: f64) -> f64 {
    (floor * 0.75).max(GROW_QUEUEING.as_secs_f64())
}

/// What became of one request, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered without push-back (including refusals of single documents): its RTT counts.
    Answered,
    /// The server pushed back (429, 502, 503, 504) or did not answer in time: shrink.
    BackPressure,
    /// Failed in a way that says nothing about load (connection refused, bad request).
    Failed,
}

/// The knobs of the controller; the defaults follow vector's.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerSettings {
    /// Upper bound of the limit (`max_in_flight`).
    pub max: usize,
    /// The limit before any answer.
    pub initial: usize,
    /// The limit once the first request, sent alone, is answered without queueing: as TCP's
    /// initial window, skipping the first doublings of slow start (three round trips at 8,
    /// pgferry's fixed number of requests before the limit adapted). The lone first request
    /// measures the floor unloaded.
    pub initial_window: usize,
    /// Factor applied to the limit on back-pressure or rising latency.
    pub decrease_ratio: f64,
    /// Weight of the newest window in the RTT average.
    pub ewma_alpha: f64,
    /// How many deviations above the average count as rising latency.
    pub rtt_deviation_scale: f64,
}

impl ControllerSettings {
    /// Defaults with `max` as the bound.
    pub fn with_max(max: usize) -> ControllerSettings {
        ControllerSettings {
            max: max.max(1),
            initial: 1,
            initial_window: 8,
            decrease_ratio: 0.9,
            ewma_alpha: 0.4,
            rtt_deviation_scale: 2.5,
        }
    }
}

/// An exponentially weighted mean and mean deviation of window RTTs (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ewma {
    mean: f64,
    deviation: f64,
}

impl Ewma {
    fn update(&mut self, sample: f64, alpha: f64) {
        let error = (sample - self.mean).abs();
        self.deviation += alpha * (error - self.deviation);
        self.mean += alpha * (sample - self.mean);
    }
}

/// The answers of the current window.
#[derive(Debug, Clone, Default)]
struct Window {
    start: Option<Duration>,
    rtt_sum: f64,
    samples: u32,
    back_pressure: bool,
    limit_used: bool,
}

/// The AIMD state machine: fed one `(time, RTT, outcome, in flight)` per answer.
#[derive(Debug, Clone)]
pub struct Controller {
    settings: ControllerSettings,
    limit: usize,
    slow_start: bool,
    average: Option<Ewma>,
    floor: Option<f64>,
    window: Window,
    last_rtt: Option<Duration>,
}

impl Controller {
    /// A controller at `settings.initial` (clamped to `1..=max`).
    pub fn new(settings: ControllerSettings) -> Controller {
        let max = settings.max.max(1);
        Controller {
            limit: settings.initial.clamp(1, max),
            settings: ControllerSettings { max, ..settings },
            slow_start: true,
            average: None,
            floor: None,
            window: Window::default(),
            last_rtt: None,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The upper bound.
    pub fn max(&self) -> usize {
        self.settings.max
    }

    /// The latest window's mean round trip (for display).
    pub fn round_trip(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Records one answer: `now` is any monotonic clock, `in_flight` the requests in flight when
    /// this one was sent (itself included). Returns the limit afterwards.
    pub fn record(
        &mut self,
        now: Duration,
        rtt: Duration,
        outcome: Outcome,
        in_flight: usize,
    ) -> usize {
        let start = *self.window.start.get_or_insert(now);
        match outcome {
            Outcome::Answered => {
                self.window.rtt_sum += rtt.as_secs_f64();
                self.window.samples += 1;
                if self.slow_start {
                    self.grow_from_answer(rtt.as_secs_f64(), in_flight);
                }
            }
            Outcome::BackPressure => self.window.back_pressure = true,
            Outcome::Failed => {}
        }
        if in_flight >= self.limit {
            self.window.limit_used = true;
        }
        // A window lasts about one round trip, so a change shows in its answers first.
        let length = self
            .average
            .map_or(rtt.as_secs_f64(), |average| average.mean);
        if (now.saturating_sub(start)).as_secs_f64() >= length {
            self.end_window();
        }
        self.limit
    }

    /// Slow start as in TCP: one more request per answer that did not queue, so the limit
    /// doubles every round trip however the answers fall into windows. Only while at least
    /// half the limit was in use when the request went out (a limit nobody uses says nothing).
    fn grow_from_answer(&mut self, rtt: f64, in_flight: usize) {
        if self.floor.is_none() && in_flight == 1 {
            self.floor = Some(rtt);
            self.limit = self
                .limit
                .max(self.settings.initial_window)
                .min(self.settings.max);
            return;
        }
        let floor = self.floor.unwrap_or(rtt);
        if rtt - floor <= grow_band(floor) && in_flight.saturating_mul(2) >= self.limit {
            self.limit = (self.limit + 1).min(self.settings.max);
        }
    }

    fn end_window(&mut self) {
        let window = std::mem::take(&mut self.window);
        let alone = self.limit == 1;
        let current = (window.samples > 0).then(|| window.rtt_sum / f64::from(window.samples));
        if let Some(current) = current {
            self.last_rtt = Some(Duration::from_secs_f64(current));
        }
        let rising = match (current, self.average, self.floor) {
            (Some(current), Some(average), Some(floor)) => {
                let queueing = current - floor;
                queueing > floor.max(SHRINK_QUEUEING.as_secs_f64())
                    || (queueing > grow_band(floor)
                        && current
                            > average.mean + self.settings.rtt_deviation_scale * average.deviation)
            }
            _ => false,
        };
        let near_floor = match (current, self.floor) {
            (Some(current), Some(floor)) => current - floor <= grow_band(floor),
            (Some(_), None) => true,
            _ => false,
        };
        if window.back_pressure || rising {
            self.slow_start = false;
            let reduced = (self.limit as f64 * self.settings.decrease_ratio).floor() as usize;
            self.limit = reduced.clamp(1, self.settings.max);
        } else if window.limit_used && near_floor && !self.slow_start {
            // +⌈√limit⌉ rather than +1: on a 150 ms link +1 per window would take seconds to
            // climb from 16 to the 40-odd requests the link needs.
            let grown = self.limit + (self.limit as f64).sqrt().ceil() as usize;
            self.limit = grown.min(self.settings.max);
        }
        if let Some(current) = current {
            match &mut self.average {
                Some(average) => average.update(current, self.settings.ewma_alpha),
                None => {
                    self.average = Some(Ewma {
                        mean: current,
                        deviation: current / 2.0,
                    })
                }
            }
            self.floor = match self.floor {
                Some(floor) if !alone => Some(floor.min(current)),
                _ => Some(current),
            };
        }
    }
}

/// Where the limiter reports its limit and round trip (the metrics' gauges).
#[derive(Debug, Default)]
pub struct ConcurrencyGauges {
    /// Requests allowed in flight now.
    pub limit: AtomicU64,
    /// The latest window's mean round trip, in microseconds.
    pub round_trip_micros: AtomicU64,
}

#[derive(Debug)]
struct LimiterState {
    controller: Controller,
    in_flight: usize,
}

#[derive(Debug)]
struct LimiterInner {
    state: Mutex<LimiterState>,
    freed: Notify,
    epoch: Instant,
    gauges: OnceLock<Arc<ConcurrencyGauges>>,
}

/// The async gate in front of GDN requests: waits while the controller's limit is used.
#[derive(Debug, Clone)]
pub struct RequestLimiter {
    inner: Arc<LimiterInner>,
}

/// One admitted request; [`RequestPermit::finish`] reports how it went. Dropped unfinished
/// (a cancelled request), it frees its slot without a sample.
#[derive(Debug)]
pub struct RequestPermit {
    limiter: RequestLimiter,
    sent: Instant,
    in_flight: usize,
    done: bool,
}

impl RequestLimiter {
    /// A limiter with `max` as the bound of its limit.
    pub fn new(max: usize) -> RequestLimiter {
        RequestLimiter::with_settings(ControllerSettings::with_max(max))
    }

    /// A limiter with explicit controller settings.
    pub fn with_settings(settings: ControllerSettings) -> RequestLimiter {
        RequestLimiter {
            inner: Arc::new(LimiterInner {
                state: Mutex::new(LimiterState {
                    controller: Controller::new(settings),
                    in_flight: 0,
                }),
                freed: Notify::new(),
                epoch: Instant::now(),
                gauges: OnceLock::new(),
            }),
        }
    }

    /// Reports the limit and round trip into `gauges` from now on (the first caller wins: one
    /// client reports into one run's metrics).
    pub fn report_to(&self, gauges: &Arc<ConcurrencyGauges>) {
        if self.inner.gauges.set(Arc::clone(gauges)).is_ok() {
            let limit = self.limit();
            gauges.limit.store(limit as u64, Ordering::Relaxed);
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().controller.limit()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        // The state stays consistent under a panic elsewhere: every update is one assignment.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until a request may go out.
    pub async fn acquire(&self) -> RequestPermit {
        loop {
            let freed = self.inner.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.controller.limit() {
                    state.in_flight += 1;
                    return RequestPermit {
                        limiter: self.clone(),
                        sent: Instant::now(),
                        in_flight: state.in_flight,
                        done: false,
                    };
                }
            }
            freed.await;
        }
    }

    fn release(&self, sample: Option<(Duration, Outcome, usize)>) {
        let (limit, rtt) = {
            let mut state = self.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if let Some((rtt, outcome, in_flight)) = sample {
                let now = self.inner.epoch.elapsed();
                state.controller.record(now, rtt, outcome, in_flight);
            }
            (state.controller.limit(), state.controller.round_trip())
        };
        if let Some(gauges) = self.inner.gauges.get() {
            gauges.limit.store(limit as u64, Ordering::Relaxed);
            if let Some(rtt) = rtt {
                let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                gauges.round_trip_micros.store(micros, Ordering::Relaxed);
            }
        }
        self.inner.freed.notify_waiters();
    }
}

impl RequestPermit {
    /// Frees the slot and feeds the controller this request's round trip and outcome.
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        let rtt = self.sent.elapsed();
        self.limiter.release(Some((rtt, outcome, self.in_flight)));
    }
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        if !self.done {
            self.limiter.release(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server: each round sends `limit` requests at once; all answer after
    /// `rtt(limit)`, each pushed back when `push_back(limit, index)` says so.
    struct Simulation {
        controller: Controller,
        now: Duration,
        limits: Vec<usize>,
    }

    impl Simulation {
        fn new(max: usize) -> Simulation {
            Simulation {
                controller: Controller::new(ControllerSettings::with_max(max)),
                now: Duration::ZERO,
                limits: Vec::new(),
            }
        }

        fn run(
            &mut self,
            rounds: usize,
            rtt: impl Fn(usize) -> Duration,
            push_back: impl Fn(usize, usize, usize) -> bool,
        ) {
            for round in 0..rounds {
                let limit = self.controller.limit();
                let answer = rtt(limit);
                self.now += answer;
                for index in 0..limit {
                    let outcome = if push_back(round, limit, index) {
                        Outcome::BackPressure
                    } else {
                        Outcome::Answered
                    };
                    self.controller.record(self.now, answer, outcome, limit);
                }
                self.limits.push(self.controller.limit());
            }
        }

        fn last(&self, n: usize) -> &[usize] {
            &self.limits[self.limits.len().saturating_sub(n)..]
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_fast_server_gets_the_whole_bound_and_never_more() {
        let mut sim = Simulation::new(64);
        sim.run(40, |_| 50 * MS, |_, _, _| false);
        assert!(sim.limits.iter().all(|&limit| (1..=64).contains(&limit)));
        assert_eq!(sim.controller.limit(), 64, "{:?}", sim.limits);
        // Slow start: the bound is reached in a handful of round trips, not sixty.
        let reached = sim.limits.iter().position(|&limit| limit == 64).unwrap();
        assert!(reached <= 10, "reached the bound after {reached} rounds");
    }

    /// Requests sent whenever a slot is free, each answered `rtt` after it went out (answers
    /// spread over the round trip, as a busy pipeline sees them); the limit after `span`.
    fn pipelined(max: usize, rtt: Duration, span: Duration) -> usize {
        let mut controller = Controller::new(ControllerSettings::with_max(max));
        // (answer time, in flight when sent), oldest first.
        let mut flying: std::collections::VecDeque<(Duration, usize)> = Default::default();
        let mut now = Duration::ZERO;
        while now < span {
            while flying.len() < controller.limit() {
                flying.push_back((now + rtt, flying.len() + 1));
            }
            let Some((answered, in_flight)) = flying.pop_front() else {
                break;
            };
            now = answered;
            controller.record(now, rtt, Outcome::Answered, in_flight);
        }
        controller.limit()
    }

    #[test]
    fn slow_start_doubles_the_limit_every_round_trip() {
        // From 1, six round trips of 150 ms reach 64 requests when nothing queues.
        assert_eq!(pipelined(64, 150 * MS, 6 * 150 * MS + MS), 64);
        assert!(pipelined(1024, 150 * MS, 4 * 150 * MS + MS) >= 16);
    }

    #[test]
    fn the_first_request_goes_alone_and_its_answer_opens_the_initial_window() {
        let mut controller = Controller::new(ControllerSettings::with_max(64));
        assert_eq!(controller.limit(), 1);
        controller.record(50 * MS, 50 * MS, Outcome::Answered, 1);
        assert_eq!(controller.limit(), 8);
        // Never past the bound.
        let mut small = Controller::new(ControllerSettings::with_max(4));
        small.record(50 * MS, 50 * MS, Outcome::Answered, 1);
        assert_eq!(small.limit(), 4);
        // A server that pushes back at once gets no more than the one request.
        let mut busy = Controller::new(ControllerSettings::with_max(64));
        busy.record(50 * MS, 50 * MS, Outcome::BackPressure, 1);
        assert_eq!(busy.limit(), 1);
    }

    #[test]
    fn a_bound_of_one_stays_one() {
        let mut sim = Simulation::new(1);
        sim.run(20, |_| 10 * MS, |_, _, _| false);
        assert!(sim.limits.iter().all(|&limit| limit == 1));
    }

    #[test]
    fn steady_push_back_shrinks_the_limit_to_one_but_not_below() {
        let mut sim = Simulation::new(32);
        sim.run(20, |_| 20 * MS, |_, _, _| false);
        assert_eq!(sim.controller.limit(), 32);
        sim.run(60, |_| 20 * MS, |_, _, _| true);
        assert_eq!(sim.controller.limit(), 1, "{:?}", sim.limits);
        assert!(sim.limits.iter().all(|&limit| limit >= 1));
    }

    #[test]
    fn a_server_that_rate_limits_above_a_capacity_holds_the_limit_near_it() {
        // Above 12 requests in flight the server answers 429 to the excess.
        let mut sim = Simulation::new(64);
        sim.run(
            300,
            |_| 30 * MS,
            |_, limit, index| limit > 12 && index >= 12,
        );
        let tail = sim.last(100);
        assert!(tail.iter().all(|&limit| limit <= 17), "{tail:?}");
        assert!(tail.iter().any(|&limit| limit >= 10), "{tail:?}");
    }

    #[test]
    fn random_429s_cut_the_limit_each_window_they_appear_in() {
        // Three requests in ten pushed back, spread over rounds: the limit stays low.
        let mut sim = Simulation::new(64);
        sim.run(
            200,
            |_| 20 * MS,
            |round, _, index| (round * 7 + index * 3) % 10 < 3,
        );
        let tail = sim.last(50);
        assert!(tail.iter().all(|&limit| limit <= 5), "{tail:?}");
    }

    #[test]
    fn latency_that_rises_with_load_stops_growth_and_shrinks_the_limit() {
        // A server that queues beyond 10 requests: latency grows with what is in flight.
        let queueing = |limit: usize| 40 * MS * (limit.max(10) as u32) / 10;
        let mut sim = Simulation::new(128);
        sim.run(300, queueing, |_, _, _| false);
        let tail = sim.last(100);
        assert!(tail.iter().all(|&limit| limit <= 26), "{tail:?}");
        assert!(tail.iter().all(|&limit| limit >= 5), "{tail:?}");
    }

    #[test]
    fn a_short_link_may_queue_a_few_milliseconds_but_not_without_bound() {
        // 4 ms alone, 2 ms more per request in flight (a server committing in groups): the
        // round trip doubles at 2 requests, which on a short link is no overload; 25 ms of
        // queueing is.
        let mut sim = Simulation::new(64);
        sim.run(
            300,
            |limit| 4 * MS + 2 * MS * (limit as u32),
            |_, _, _| false,
        );
        let tail = sim.last(100);
        assert!(
            tail.iter().all(|&limit| (4..=14).contains(&limit)),
            "{tail:?}"
        );
    }

    #[test]
    fn a_server_that_slows_down_mid_run_gets_fewer_requests() {
        let mut sim = Simulation::new(64);
        sim.run(30, |_| 20 * MS, |_, _, _| false);
        assert_eq!(sim.controller.limit(), 64);
        sim.run(3, |limit| 20 * MS * (limit as u32) / 4, |_, _, _| false);
        assert!(sim.controller.limit() < 64, "{:?}", sim.limits);
    }

    #[test]
    fn a_path_whose_latency_rises_for_good_recovers_the_bound() {
        // 20 ms, then 150 ms for good (a new route): the limit falls to 1, where the floor is
        // measured afresh, and grows back to the bound.
        let mut sim = Simulation::new(32);
        sim.run(30, |_| 20 * MS, |_, _, _| false);
        sim.run(200, |_| 150 * MS, |_, _, _| false);
        assert_eq!(sim.controller.limit(), 32, "{:?}", sim.last(40));
    }

    #[tokio::test]
    async fn the_limiter_admits_up_to_the_limit_and_frees_on_drop() {
        let limiter = RequestLimiter::new(4);
        let gauges = Arc::new(ConcurrencyGauges::default());
        limiter.report_to(&gauges);
        assert_eq!(gauges.limit.load(Ordering::Relaxed), 1);
        let first = limiter.acquire().await;
        // The limit is 1: a second request waits until the first is done.
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        second.finish(Outcome::Answered);
        assert!(gauges.round_trip_micros.load(Ordering::Relaxed) > 0 || limiter.limit() >= 1);
    }
}
