//! Per-key rate limits: counted in Redis, shared by replicas, 429 with
//! Retry-After beyond the limit, the IETF draft's RateLimit fields on every
//! answer to a limited key.

use reqwest::Method;

use crate::helpers::{assert_problem, spawn_app_with, Options, SendExt, TestApp};

/// (status, RateLimit, RateLimit-Policy, Retry-After)
async fn list_as(
    app: &TestApp,
    key: &str,
) -> (u16, Option<String>, Option<String>, Option<String>) {
    let resp = app.req_as(key, Method::GET, "/contexts").sent().await;
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let out = (
        resp.status().as_u16(),
        h("ratelimit"),
        h("ratelimit-policy"),
        h("retry-after"),
    );
    if out.0 == 429 {
        assert_problem(resp, 429).await;
    }
    out
}

#[tokio::test]
async fn a_user_key_beyond_its_limit_gets_429_on_every_replica() {
    let app = spawn_app_with(Options::default().set("rate_limit_user_per_minute", 4)).await;
    let other = app.sibling().await;
    let alice = app.alice.key.clone();
    // Four requests, spread over two replicas, use up alice's quota.
    for (i, expected_remaining) in [3, 2, 1, 0].into_iter().enumerate() {
        let on = if i % 2 == 0 { &app } else { &other };
        let (status, state, policy, _) = list_as(on, &alice).await;
        assert_eq!(status, 200);
        assert_eq!(policy.as_deref(), Some("\"per-key\";q=4;w=60"));
        let state = state.unwrap();
        assert!(
            state.starts_with(&format!("\"per-key\";r={expected_remaining};t=")),
            "{state}"
        );
    }
    for on in [&app, &other] {
        let (status, state, _, retry_after) = list_as(on, &alice).await;
        assert_eq!(status, 429);
        let secs: u64 = retry_after.unwrap().parse().unwrap();
        assert!(
            (1..=15).contains(&secs),
            "one request frees up every 15 s: {secs}"
        );
        assert!(state.unwrap().starts_with("\"per-key\";r=0;t="));
    }
    // Each key has its own quota; the admin key has no limit configured.
    assert_eq!(list_as(&app, &app.bob.key.clone()).await.0, 200);
    let (status, state, _, _) = list_as(&app, crate::helpers::ADMIN_KEY).await;
    assert_eq!((status, state), (200, None));
    // Probes are never limited.
    let resp = app.client.get(app.url("/ready")).sent().await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_limiter_lets_requests_through_when_redis_is_down() {
    // A port where nothing listens.
    let dead = "redis://127.0.0.1:1";
    let app = spawn_app_with(
        Options::default()
            .set("rate_limit_user_per_minute", 1)
            .set("redis_url", dead)
            .set("redis_optional", true),
    )
    .await;
    let alice = app.alice.key.clone();
    for _ in 0..3 {
        let (status, state, _, _) = list_as(&app, &alice).await;
        assert_eq!((status, state), (200, None));
    }
}
