//! Reading requests and writing answers: the admin routes' preamble (`Admin`), the query string,
//! JSON bodies, the `Idempotency-Key`, and the router's 404 and 405. Everything a client sends
//! is read here by hand, so that every refusal is a `Problem`, never one of axum's rejections.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::RequestPartsExt;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::{Actor, MAX_BODY, MAX_IDEMPOTENCY_KEY, ROUTES, UsageApi};
use crate::engine::identity::{MAX_TENANT_ID, validate_tenant_id};

/// What every route answers: a JSON answer, or a problem.
pub(super) type Answer = Result<Response, Problem>;

/// The query parameters a route takes, by name.
pub(super) trait QueryNames {
    const NAMES: &'static [&'static str];
}

/// A route that takes no query parameter.
pub(super) struct NoQuery;

impl QueryNames for NoQuery {
    const NAMES: &'static [&'static str] = &[];
}

/// Whether an admin route is on one tenant (`Tenant`: its path has `{tenant}`) or not.
pub(super) trait TenantSegment {
    type Value: Send;
    fn read(parts: &mut Parts) -> impl Future<Output = Result<Self::Value, Problem>> + Send;
}

/// An admin route on no one tenant.
pub(super) struct NoTenant;

impl TenantSegment for NoTenant {
    type Value = ();
    async fn read(_: &mut Parts) -> Result<(), Problem> {
        Ok(())
    }
}

/// An admin route on the tenant its path names.
pub(super) struct Tenant;

impl TenantSegment for Tenant {
    type Value = String;
    async fn read(parts: &mut Parts) -> Result<String, Problem> {
        tenant_of(parts.extract::<Path<String>>().await)
    }
}

/// An admin route's request, read in this order, each refusal before the next read: the caller
/// is let in (`AdminAuth`), the tenant segment is valid (`T`), the query holds only the names
/// the route takes (`Q`). A JSON body, read last, is a separate `JsonBody`.
pub(super) struct Admin<T: TenantSegment = NoTenant, Q: QueryNames = NoQuery> {
    /// Who to record as the actor of a change.
    pub actor: String,
    pub tenant: T::Value,
    pub query: Vec<(String, String)>,
    names: PhantomData<Q>,
}

impl<S, T, Q> FromRequestParts<S> for Admin<T, Q>
where
    S: Send + Sync,
    Arc<UsageApi>: FromRef<S>,
    T: TenantSegment,
    Q: QueryNames,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let api = Arc::<UsageApi>::from_ref(state);
        let actor = api.admin.check(&parts.headers, parts.extensions.get::<Actor>())?;
        let tenant = T::read(parts).await?;
        let query = query(&parts.uri, Q::NAMES)?;
        Ok(Admin {
            actor,
            tenant,
            query,
            names: PhantomData,
        })
    }
}

/// A JSON body: `application/json`, at most `MAX_BODY` bytes, no unknown fields (`T` says
/// `deny_unknown_fields`); with the bytes as sent.
pub(super) struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, _: &S) -> Result<Self, Problem> {
        let (parts, body) = req.into_parts();
        let (value, raw) = json_body(&parts.headers, body).await?;
        Ok(JsonBody { value, raw })
    }
}

/// The request's one `Idempotency-Key`: 1 to `MAX_IDEMPOTENCY_KEY` visible ASCII characters.
pub(super) struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

pub(super) async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(format!(
        "no route `{}`: the usage API serves /v1/usage, /v1/shed and /v1/tenants[/{{tenant}}[/usage|/plan|/keys|/reset]]",
        uri.path()
    ))
}

/// A 405 with `Allow`: the methods `ROUTES` serves on this path.
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let allowed: Vec<String> = ROUTES
        .iter()
        .filter(|(template, _)| template_matches(template, uri.path()))
        .map(|(_, m)| m.to_ascii_uppercase())
        .collect();
    let allow = allowed.join(", ");
    let mut res = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not served on `{}`; it serves {allow}", uri.path()),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}

/// Whether `path` is an instance of the route `template` (`{name}` matches one segment).
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// A new tenant's id (onboarding): 1 to 64 characters, a letter or digit first, then letters,
/// digits and `. _ : @ -`, which API Gateway's `customerId`, URLs and logs carry unescaped.
/// Existing tenants keep whatever id the policy gave them.
pub fn check_new_tenant_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || id.len() > 64 || !chars.all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c)) {
        return Err(format!(
            "{id:?} is not a new tenant id: 1 to 64 characters, a letter or digit first, then letters, digits and . _ : @ -"
        ));
    }
    Ok(())
}

/// The tenant path segment, decoded and valid. An id longer than any tenant's (the contract
/// counts characters, the limit is bytes) names no tenant: 404.
fn tenant_of(path: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let Path(tenant) = path.map_err(|e| Problem::bad_request(format!("path segment `tenant`: {e}")))?;
    if tenant.len() > MAX_TENANT_ID {
        return Err(Problem::not_found(format!(
            "no tenant has this id: tenant ids are at most {MAX_TENANT_ID} bytes, this one is {}",
            tenant.len()
        )));
    }
    validate_tenant_id(&tenant).map_err(|e| Problem::bad_request(format!("path segment `tenant`: {e}")))?;
    Ok(tenant)
}

/// The query string as name → value, each name once, only the names allowed.
pub(super) fn query(uri: &Uri, allowed: &[&str]) -> Result<Vec<(String, String)>, Problem> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if !allowed.contains(&k.as_str()) {
            return Err(Problem::bad_request(format!(
                "unknown query parameter `{k}`; allowed: {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == k) {
            return Err(Problem::bad_request(format!("query parameter `{k}` given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

pub(super) fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Percent-decoding (`+` is a space, as forms send it); malformed escapes and non-UTF-8 are errors.
fn decode(s: &str) -> Result<String, Problem> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Problem::bad_request(format!("malformed percent-encoding in query `{s}`")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Problem::bad_request(format!("query `{s}` is not UTF-8 once decoded")))
}

async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<(T, Bytes), Problem> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime != "application/json" {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("the body must be `Content-Type: application/json`, got `{ct}`"),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is over {MAX_BODY} bytes (or could not be read)"),
        )
    })?;
    let value = serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("JSON body: {e}")))?;
    Ok((value, bytes))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(v) = single_header(headers, "idempotency-key") else {
        return Err(Problem::bad_request(
            "send exactly one `Idempotency-Key` header (e.g. a UUID): a retry with the same key creates nothing new",
        ));
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_request(format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(s.to_owned())
}

/// The value of a header sent exactly once; `None` when it is missing or repeated.
pub(super) fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// A JSON number that is a whole number from 0 to `max`: `60.0` is the integer 60, as JSON
/// Schema says.
pub(super) fn whole_number(n: &serde_json::Number, max: u64) -> Option<u64> {
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                .map(|f| f as u64)
        })
        .filter(|v| *v <= max)
}

/// A JSON answer (axum's `Json` would need a feature for nothing more).
pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut res = (status, serde_json::to_string(body).unwrap_or_default()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub(super) fn created<T: Serialize>(body: T) -> Response {
    json(StatusCode::CREATED, &body)
}
