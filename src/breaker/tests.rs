use std::time::Duration;

use super::*;
use crate::failure::{Kind, Verdict};

fn cfg() -> BreakerParams {
    BreakerParams {
        enabled: true,
        window: Duration::from_secs(10),
        min_calls: 10,
        failure_rate: 0.5,
        consecutive_failures: 5,
        open_for: Duration::from_secs(5),
        max_open_for: Duration::from_secs(60),
        probes: 2,
    }
}

fn ok() -> Class {
    Class::OK
}

fn transient() -> Class {
    Class {
        verdict: Verdict::Transient,
        kind: Kind::Status(503),
        may_have_reached: true,
        retry_after: None,
    }
}

fn permanent_4xx() -> Class {
    Class {
        verdict: Verdict::Permanent,
        kind: Kind::Status(400),
        may_have_reached: true,
        retry_after: None,
    }
}

fn admitted(b: &Breaker) -> bool {
    !matches!(b.admit(), Admission::Rejected(_))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn trips_on_consecutive_failures() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..4 {
        b.record(&transient());
    }
    assert_eq!(b.state(), State::Shut);
    b.record(&transient());
    assert_eq!(b.state(), State::Open);
    assert!(!admitted(&b));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn trips_on_failure_rate_only_after_min_calls() {
    let mut c = cfg();
    c.consecutive_failures = 0;
    let b = Breaker::new(c, BreakerMetrics::default());
    // Alternate: 50% failures but never two in a row.
    for _ in 0..4 {
        b.record(&ok());
        b.record(&transient());
    }
    assert_eq!(b.state(), State::Shut, "8 calls is below min_calls");
    b.record(&ok());
    b.record(&transient());
    assert_eq!(b.state(), State::Open, "10 calls at 50%");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn old_failures_leave_the_window() {
    let mut c = cfg();
    c.consecutive_failures = 0;
    let b = Breaker::new(c, BreakerMetrics::default());
    for _ in 0..9 {
        b.record(&transient());
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..9 {
        b.record(&ok());
    }
    b.record(&transient());
    assert_eq!(b.state(), State::Shut, "1 failure in 10 recent calls");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn four_xx_does_not_count() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..50 {
        b.record(&permanent_4xx());
    }
    assert_eq!(b.state(), State::Shut);
    assert_eq!(b.snapshot().window_failures, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn half_open_success_closes() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..5 {
        b.record(&transient());
    }
    assert!(!admitted(&b));
    tokio::time::advance(Duration::from_secs(5)).await;
    let p1 = b.admit();
    let p2 = b.admit();
    assert!(matches!(p1, Admission::Probe(_)));
    assert!(matches!(p2, Admission::Probe(_)));
    assert_eq!(b.state(), State::Probing);
    assert!(!admitted(&b), "only `probes` requests at once");
    b.record(&ok());
    assert_eq!(b.state(), State::Probing, "one success is not enough");
    b.record(&ok());
    assert_eq!(b.state(), State::Shut);
    drop((p1, p2));
    assert!(matches!(b.admit(), Admission::Allowed));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn half_open_failure_reopens() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..5 {
        b.record(&transient());
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let _probe = b.admit();
    b.record(&transient());
    assert_eq!(b.state(), State::Open);
    match b.admit() {
        Admission::Rejected(wait) => assert_eq!(wait, Duration::from_secs(5)),
        other => panic!("expected rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_extends_open_time_up_to_the_cap() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..4 {
        b.record(&transient());
    }
    b.record(&Class {
        retry_after: Some(Duration::from_secs(30)),
        ..transient()
    });
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(!admitted(&b));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(admitted(&b));

    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..4 {
        b.record(&transient());
    }
    b.record(&Class {
        retry_after: Some(Duration::from_secs(3600)),
        ..transient()
    });
    assert_eq!(b.retry_after(), Some(Duration::from_secs(60)));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropped_probe_frees_its_slot() {
    let b = Breaker::new(cfg(), BreakerMetrics::default());
    for _ in 0..5 {
        b.record(&transient());
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let p1 = b.admit();
    let p2 = b.admit();
    assert!(!admitted(&b));
    drop(p1);
    assert!(matches!(b.admit(), Admission::Probe(_)));
    drop(p2);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn disabled_breaker_admits_everything() {
    let mut c = cfg();
    c.enabled = false;
    let b = Breaker::new(c, BreakerMetrics::default());
    for _ in 0..100 {
        b.record(&transient());
    }
    assert!(matches!(b.admit(), Admission::Allowed));
}
