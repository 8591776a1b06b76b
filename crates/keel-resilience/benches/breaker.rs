//! Cost of a circuit breaker in CLOSED state, Keel beside its peers `recloser` and
//! `tower-resilience`, in one run.
//!
//! `cargo bench -p keel-resilience --bench breaker -- --measurement-time 3 --warm-up-time 1`
//!
//! Every benchmark polls the same ready future (`Ok(n)`) with a no-op waker:
//! - `bare`: the future alone — the baseline;
//! - `keel`: through `CircuitBreaker::call` (async, records the outcome);
//! - `keel/layer`: through Keel's tower `CircuitBreakerService` (`poll_ready` + `call` +
//!   response future);
//! - `recloser`: through `recloser::AsyncRecloser::call`, the peer's async API;
//! - `recloser/sync`: through `recloser::Recloser::call` with a closure, its sync API;
//! - `tower_resilience`: through `tower-resilience`'s circuit breaker service
//!   (`tower_resilience_circuitbreaker`, `poll_ready` + `call` + response future) — a tower
//!   service only, so its like-for-like Keel figure is `keel/layer`.
//!
//! `…/contended` variants run the same loop on two threads sharing one breaker (each thread
//! has its own clone of a tower service); the time is per call per thread. A response future
//! is polled until it is ready: once for every breaker except tower-resilience's under
//! contention, whose `tokio::sync::Mutex` makes a call wait (spinning on the no-op waker, as
//! recloser's spin lock does) while the other thread holds it. `…/failing_1pct` variants make
//! every hundredth call fail (the breaker stays closed), which keeps a failure in the window
//! and so exercises Keel's ring rather than its all-successes fast path. Every breaker is
//! configured with a window of the last 100 calls.
//!
//! At the end, `summary:` lines give every benchmark's mean from this run (rounded to 0.1 ns;
//! a benchmark that did not run in this process is reported missing, never read from an
//! earlier run), its added nanoseconds per call (mean minus the `bare` mean of the same
//! contention), and Keel's ratio to each peer.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Barrier, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use futures::FutureExt;
use keel_resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use recloser::{AsyncRecloser, Recloser};
use tower::{Layer, Service};
use tower_resilience_circuitbreaker::CircuitBreakerLayer as TowerResilienceLayer;

const WINDOW: u32 = 100;

fn keel() -> CircuitBreaker {
    CircuitBreaker::new(
        "bench",
        CircuitBreakerConfig {
            sliding_window_size: WINDOW,
            minimum_number_of_calls: WINDOW,
            ..CircuitBreakerConfig::default()
        },
    )
    .expect("valid config")
}

fn recloser() -> Recloser {
    Recloser::custom()
        .error_rate(0.5)
        .closed_len(WINDOW as usize)
        .half_open_len(10)
        .open_wait(Duration::from_secs(30))
        .build()
}

fn tower_resilience() -> TowerResilienceLayer {
    TowerResilienceLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(WINDOW as usize)
        .minimum_number_of_calls(WINDOW as usize)
        .wait_duration_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(10)
        .build()
        .expect("valid config")
}

/// The service every tower benchmark wraps: answers `Ok(n)` at once.
fn echo(n: u64) -> std::future::Ready<Result<u64, Infallible>> {
    std::future::ready(Ok(black_box(n)))
}

/// Polls `future` with a no-op waker until it is ready (once, unless it waits for a lock).
fn drive<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::hint::spin_loop();
    }
}

/// One call through a tower service: `poll_ready` (which must be ready), `call`, and the
/// response future driven to completion.
fn tower_call<S: Service<u64>>(service: &mut S, n: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => drive(service.call(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => panic!("a closed breaker is always ready"),
    }
}

#[inline(never)]
fn work(n: u64) -> impl Future<Output = Result<u64, ()>> {
    std::future::ready(Ok(black_box(n)))
}

/// Fails one call in a hundred.
#[inline(never)]
fn flaky(n: u64) -> impl Future<Output = Result<u64, ()>> {
    std::future::ready(if n.is_multiple_of(100) {
        Err(())
    } else {
        Ok(black_box(n))
    })
}

/// Run `f` on two threads at once, `iters` times each, with per-thread state made by `init`
/// (before the clock starts); the wall time of the slower thread.
fn contended<T, I, F>(iters: u64, init: I, f: F) -> Duration
where
    I: Fn() -> T + Sync,
    F: Fn(&mut T, u64) + Sync,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let run = || {
            let mut state = init();
            barrier.wait();
            let started = Instant::now();
            for i in 0..iters {
                f(&mut state, i);
            }
            started.elapsed()
        };
        let a = scope.spawn(run);
        let b = scope.spawn(run);
        a.join()
            .expect("bench thread")
            .max(b.join().expect("bench thread"))
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");

    group.bench_function("bare", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            work(n).now_or_never()
        })
    });

    let breaker = keel();
    group.bench_function("keel", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            breaker.call(work(n)).now_or_never()
        })
    });

    let mut service = CircuitBreakerLayer::new(keel()).layer(tower::service_fn(echo));
    group.bench_function("keel/layer", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            tower_call(&mut service, n)
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            async_recloser.call(work(n)).now_or_never()
        })
    });

    let sync_recloser = recloser();
    group.bench_function("recloser/sync", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            sync_recloser.call(|| black_box(Ok::<u64, ()>(black_box(n))))
        })
    });

    let mut service = tower_resilience().layer(tower::service_fn(echo));
    group.bench_function("tower_resilience", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            tower_call(&mut service, n)
        })
    });

    let breaker = keel();
    group.bench_function("keel/failing_1pct", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            breaker.call(flaky(n)).now_or_never()
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser/failing_1pct", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            async_recloser.call(flaky(n)).now_or_never()
        })
    });

    group.bench_function("bare/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || (),
                |_, i| {
                    black_box(work(i).now_or_never());
                },
            )
        })
    });

    let breaker = keel();
    group.bench_function("keel/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || (),
                |_, i| {
                    black_box(breaker.call(work(i)).now_or_never());
                },
            )
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || (),
                |_, i| {
                    black_box(async_recloser.call(work(i)).now_or_never());
                },
            )
        })
    });

    let sync_recloser = recloser();
    group.bench_function("recloser/sync/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || (),
                |_, i| {
                    let _ =
                        black_box(sync_recloser.call(|| black_box(Ok::<u64, ()>(black_box(i)))));
                },
            )
        })
    });

    // One breaker shared by both threads; each thread has its own service built by the layer.
    let layer = CircuitBreakerLayer::new(keel());
    group.bench_function("keel/layer/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || layer.layer(tower::service_fn(echo)),
                |service, i| {
                    let _ = black_box(tower_call(service, i));
                },
            )
        })
    });

    // A service clone shares its circuit with the original (layers made by `build()` give each
    // `layer()` call a circuit of its own, so the threads clone one service).
    let service = tower_resilience().layer(tower::service_fn(echo));
    let shared = std::sync::Mutex::new(service);
    group.bench_function("tower_resilience/contended", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                || shared.lock().expect("not poisoned").clone(),
                |service, i| {
                    let _ = black_box(tower_call(service, i));
                },
            )
        })
    });

    group.finish();
}

/// When this process started: estimates written before it belong to another run.
static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Criterion's mean (ns) of `breaker/<id>`, written by this run, rounded to 0.1 ns so that the
/// differences printed below are exact differences of the printed means.
fn estimate(id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = dir
        .join("criterion/breaker")
        .join(id.replace('/', "_"))
        .join("new/estimates.json");
    let written = std::fs::metadata(&path).ok()?.modified().ok()?;
    if written < *STARTED.get()? {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mean = json["mean"]["point_estimate"].as_f64()?;
    Some((mean * 10.0).round() / 10.0)
}

const IDS: [&str; 14] = [
    "bare",
    "keel",
    "keel/layer",
    "recloser",
    "recloser/sync",
    "tower_resilience",
    "keel/failing_1pct",
    "recloser/failing_1pct",
    "bare/contended",
    "keel/contended",
    "keel/layer/contended",
    "recloser/contended",
    "recloser/sync/contended",
    "tower_resilience/contended",
];

fn summary() {
    let added = |id: &str| -> Option<f64> {
        let bare = if id.ends_with("/contended") {
            "bare/contended"
        } else {
            "bare"
        };
        Some(estimate(id)? - estimate(bare)?)
    };
    for id in IDS {
        match (estimate(id), added(id)) {
            (Some(mean), _) if id.starts_with("bare") => {
                println!("summary: {id}: {mean:.1} ns/call")
            }
            (Some(mean), Some(added)) => {
                println!("summary: {id}: {mean:.1} ns/call, added {added:.1}")
            }
            (Some(mean), None) => println!("summary: {id}: {mean:.1} ns/call, no baseline"),
            (None, _) => println!("summary: {id}: missing (not run in this process)"),
        }
    }
    let failing = (|| {
        let keel = estimate("keel/failing_1pct")?;
        let recloser = estimate("recloser/failing_1pct")?;
        Some(format!(
            "ns/call with 1% failures: keel {keel:.1}, recloser {recloser:.1}"
        ))
    })();
    if let Some(line) = failing {
        println!("summary: {line}");
    }
    for suffix in ["", "/contended"] {
        let line = (|| {
            let keel = added(&format!("keel{suffix}"))?;
            let recloser = added(&format!("recloser{suffix}"))?;
            let sync = added(&format!("recloser/sync{suffix}"))?;
            let layer = added(&format!("keel/layer{suffix}"))?;
            let tower = added(&format!("tower_resilience{suffix}"))?;
            Some(format!(
                "added ns/call{suffix}: keel {keel:.1}, recloser {recloser:.1} (sync {sync:.1}); \
                 keel/recloser {:.2}x; tower services: keel/layer {layer:.1}, tower_resilience \
                 {tower:.1}; keel/layer/tower_resilience {:.2}x",
                keel / recloser,
                layer / tower
            ))
        })();
        match line {
            Some(line) => println!("summary: {line}"),
            None => println!("summary{suffix}: not all benchmarks ran (filtered?)"),
        }
    }
}

fn main() {
    STARTED.get_or_init(SystemTime::now);
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    summary();
}
