//! The simulator's HTTP side: one connection task per client, so a fault can
//! drop a connection after the request was applied.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tower::ServiceExt as _;

use super::shared::{FaultAction, LoggedRequest, Shared};
use super::state::error;
use crate::clock::SharedClock;

const PREFIX: &str = "/api/app";

#[derive(Clone)]
struct Ctx {
    shared: Arc<Mutex<Shared>>,
    clock: SharedClock,
    /// The region this listener serves (`mixpanel.com`, `eu.mixpanel.com`).
    region: Arc<str>,
}

/// Asks the connection task to drop the connection.
#[derive(Clone)]
struct Killer(Arc<Notify>);

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Mutex<Shared>>,
    clock: SharedClock,
    region: String,
) {
    let ctx = Ctx {
        shared,
        clock,
        region: Arc::from(region),
    };
    let app = axum::Router::new().fallback(handle).with_state(ctx);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // As a real server would: no Nagle delay on small answers.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let killer = Killer(kill.clone());
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(killer.clone());
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {} // dropping `conn` closes the socket unanswered
            }
        });
    }
}

/// `GET /_simulator/stats` (no auth, outside the API): how many requests
/// the simulator answered, in all and by method and path shape, for
/// benchmarks.
fn stats(ctx: &Ctx) -> serde_json::Value {
    let s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut by: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for q in &s.log {
        let shape: Vec<&str> = q
            .path
            .split('/')
            .map(|seg| {
                if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
                    "*"
                } else {
                    seg
                }
            })
            .collect();
        let n = by.entry(format!("{} {}", q.method, shape.join("/"))).or_default();
        *n = n.saturating_add(1);
    }
    serde_json::json!({"requests": s.log.len(), "by_endpoint": by})
}

fn respond(status: u16, body: &serde_json::Value, extra: &[(header::HeaderName, String)]) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        b = b.header(k, v);
    }
    b.body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn credentials(headers: &HeaderMap) -> Option<(String, zeroize::Zeroizing<String>)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?.trim();
    // Base64 as the standard says; some clients send `user:secret` plainly.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| s.contains(':'))
        .unwrap_or_else(|| rest.to_string());
    let decoded = zeroize::Zeroizing::new(decoded);
    let (u, s) = decoded.split_once(':')?;
    Some((u.to_string(), zeroize::Zeroizing::new(s.to_string())))
}

/// One request as it goes through the simulator, for the request log.
struct Req<'a> {
    ctx: &'a Ctx,
    method: String,
    received: Instant,
    at: chrono::DateTime<chrono::Utc>,
}

/// What a programmed fault does to a request.
enum Faulted {
    /// Answered by the fault.
    Answer(Response<Body>),
    /// Apply the request, then drop the connection.
    Drop,
    /// Handle it normally.
    Proceed,
}

impl Req<'_> {
    fn log(&self, status: Option<u16>, path: &str, caller: Option<String>) {
        let mut s = self.ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.log.push(LoggedRequest {
            method: self.method.clone(),
            path: path.to_string(),
            status,
            caller,
            received: self.received,
            at: self.at,
            region: self.ctx.region.to_string(),
        });
    }

    /// Applies the first fault programmed for this request, if any.
    async fn fault(&self, path: &str, headers: &HeaderMap) -> Faulted {
        let caller = credentials(headers).map(|(u, _)| u);
        let action = {
            let mut s = self.ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
            let hit = s
                .faults
                .iter_mut()
                .find(|f| f.matches(&self.method, path, caller.as_deref()));
            hit.map(|f| {
                if let Some(n) = f.times.as_mut() {
                    *n = n.saturating_sub(1);
                }
                f.action.clone()
            })
        };
        match action {
            Some(FaultAction::Status(code)) => {
                self.log(Some(code), path, None);
                let (st, b) = error(code, "Injected fault");
                Faulted::Answer(respond(st, &b, &[]))
            }
            Some(FaultAction::Error { status, message }) => {
                self.log(Some(status), path, None);
                let (st, b) = error(status, message);
                Faulted::Answer(respond(st, &b, &[]))
            }
            Some(FaultAction::RateLimit { retry_after_secs }) => {
                self.log(Some(429), path, None);
                let (st, b) = error(429, "Too many requests");
                Faulted::Answer(respond(st, &b, &[(header::RETRY_AFTER, retry_after_secs.to_string())]))
            }
            Some(FaultAction::Latency(d)) => {
                tokio::time::sleep(d).await;
                Faulted::Proceed
            }
            Some(FaultAction::Hold(gate)) => {
                gate.hold().await;
                Faulted::Proceed
            }
            Some(FaultAction::CommitThenDrop) => Faulted::Drop,
            None => Faulted::Proceed,
        }
    }

    /// Authenticates and applies the request.
    fn answer(&self, headers: &HeaderMap, path: &str, body: &[u8]) -> Answered {
        let now = self.ctx.clock.now();
        let mut s = self.ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
        let refused = |(status, body): (u16, serde_json::Value)| Answered {
            status,
            body,
            caller: None,
        };
        let Some((user, secret)) = credentials(headers) else {
            return refused(error(401, "Authentication required"));
        };
        s.org.settle_uses(now);
        match s.org.authenticate(&user, &secret, now) {
            Err(answer) => refused(answer),
            Ok(caller) => {
                let req = super::state::SimRequest {
                    method: &self.method,
                    path,
                    body,
                    region: &self.ctx.region,
                };
                let (status, body) = s.org.handle(caller, &req, now);
                Answered {
                    status,
                    body,
                    caller: Some(user),
                }
            }
        }
    }
}

/// The simulator's answer to a request, and who asked.
struct Answered {
    status: u16,
    body: serde_json::Value,
    caller: Option<String>,
}

async fn handle(
    axum::extract::State(ctx): axum::extract::State<Ctx>,
    axum::Extension(killer): axum::Extension<Killer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, Infallible> {
    let req = Req {
        ctx: &ctx,
        method: method.as_str().to_string(),
        received: Instant::now(),
        at: ctx.clock.now(),
    };
    let full = uri.path().to_string();
    if full == "/_simulator/stats" {
        return Ok(respond(200, &stats(&ctx), &[]));
    }
    let (latency, stopped) = {
        let s = ctx.shared.lock().unwrap_or_else(|e| e.into_inner());
        (s.latency, s.stopped)
    };
    if stopped {
        // As a server that is gone: no answer, the connection closed.
        killer.0.notify_one();
        std::future::pending::<()>().await;
    }
    // The answer leaves `latency` after the request arrived, the
    // simulator's own work counted in it, as a distant server's would be.
    let delay = latency.map(|(base, jitter)| base.saturating_add(jitter.mul_f64(rand::random::<f64>())));
    let received = req.received;
    let mut resp = answer_request(&req, &full, &headers, &body, &killer).await;
    if let Some(d) = delay {
        super::delay::after(received, d).await;
    }
    // As any HTTP server: the time of the answer, by this server's clock
    // (hyper would add the machine's).
    let date = ctx.clock.now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = header::HeaderValue::from_str(&date) {
        resp.headers_mut().insert(header::DATE, v);
    }
    Ok(resp)
}

/// The answer to one request (after the stats route and a stopped server
/// are handled), as the routes, the faults and the redirects give it.
async fn answer_request(
    req: &Req<'_>,
    full: &str,
    headers: &HeaderMap,
    body: &Bytes,
    killer: &Killer,
) -> Response<Body> {
    let Some(path) = full.strip_prefix(PREFIX).map(str::to_string) else {
        let (st, b) = error(404, "Not found");
        req.log(Some(st), full, None);
        return respond(st, &b, &[]);
    };
    // Like some App API routes: a trailing slash is redirected.
    if path.len() > 1 && path.ends_with('/') {
        req.log(Some(301), &path, None);
        let to = format!("{PREFIX}{}", path.trim_end_matches('/'));
        return respond(301, &serde_json::json!({}), &[(header::LOCATION, to)]);
    }
    let drop_after = match req.fault(&path, headers).await {
        Faulted::Answer(resp) => return resp,
        Faulted::Drop => true,
        Faulted::Proceed => false,
    };
    let Answered {
        status,
        body: answer,
        caller,
    } = req.answer(headers, &path, body);
    if drop_after {
        req.log(None, &path, caller.clone());
        killer.0.notify_one();
        std::future::pending::<()>().await;
    }
    req.log(Some(status), &path, caller);
    let mut extra = vec![];
    if status == 405 {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        extra.push((header::ALLOW, super::state::allowed_methods(&segs).join(", ")));
    }
    respond(status, &answer, &extra)
}
