//! A loopback proxy between the CloudWatch SDK and the emulator. The SDK speaks only Smithy RPC
//! v2 CBOR to CloudWatch (`POST /service/GraniteServiceVersion20100801/operation/{Op}`, CBOR
//! bodies); the emulator speaks CloudWatch's JSON 1.0 protocol and its Query protocol, not CBOR.
//! The shim re-encodes each request as JSON (`X-Amz-Target`), and each answer back as CBOR. It
//! also pages `DescribeAlarms` (`size` alarms a page, with an invented `NextToken`), which the
//! emulator never does, so a pager is tested against pages. Hand-written because the emulator
//! cannot do either; it translates, and every alarm is stored and read by the emulator.
//! Timestamps are dropped from answers (the code under test reads none). Calls to any other
//! service pass through unchanged, so a command given one endpoint works through it. Built on the
//! HTTP proxy of `proxy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use minicbor::data::Type;
use serde_json::{Map, Number, Value};

use super::proxy::{self, PagingProxy, Upstream};

const TARGET_PREFIX: &str = "GraniteServiceVersion20100801";

/// The shim's side of the proxy: the `DescribeAlarms` page size, and the count of partial pages
/// served.
#[derive(Debug, Clone)]
struct Translator {
    size: usize,
    pages: Arc<AtomicU64>,
}

/// A CBOR shim in front of `upstream`, paging `DescribeAlarms` by `size` alarms.
pub async fn start(upstream: &str, size: usize) -> PagingProxy {
    PagingProxy::start(upstream, |pages| Translator { size, pages }).await
}

impl proxy::Handler for Translator {
    async fn handle(&self, upstream: &Upstream, parts: Parts, body: Bytes) -> Response {
        let Some(operation) = parts
            .uri
            .path()
            .strip_prefix(&format!("/service/{TARGET_PREFIX}/operation/"))
            .map(str::to_owned)
        else {
            // Any other service's call (DynamoDB, for a command given one endpoint), unchanged.
            return upstream.pass_through(&parts, body).await;
        };
        let mut input = if body.is_empty() {
            Value::Object(Map::new())
        } else {
            match decode(&mut minicbor::Decoder::new(&body)) {
                Ok(v) => v,
                Err(e) => return (StatusCode::BAD_REQUEST, format!("CBOR: {e}")).into_response(),
            }
        };
        let paged = operation == "DescribeAlarms";
        let offset: usize = if paged {
            let token = input.as_object_mut().and_then(|o| o.remove("NextToken"));
            token.and_then(|t| t.as_str().and_then(|t| t.parse().ok())).unwrap_or(0)
        } else {
            0
        };
        let mut request = upstream
            .http
            .post(upstream.url("/"))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("{TARGET_PREFIX}.{operation}"))
            .body(input.to_string());
        // The emulator reads the region from the credential scope; it checks no signature.
        for name in ["authorization", "x-amz-date"] {
            if let Some(v) = parts.headers.get(name) {
                request = request.header(name, v);
            }
        }
        let Ok(answer) = request.send().await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        let mut output: Value = if text.is_empty() {
            Value::Object(Map::new())
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => return (status, text).into_response(),
            }
        };
        if paged && status.is_success() {
            self.page(&mut output, offset);
        }
        let mut e = minicbor::Encoder::new(Vec::new());
        encode(&mut e, &output);
        (
            status,
            [("content-type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")],
            e.into_writer(),
        )
            .into_response()
    }
}

impl Translator {
    /// Keeps `size` alarms from `offset`, with a `NextToken` when more follow.
    fn page(&self, output: &mut Value, offset: usize) {
        let alarms = output["MetricAlarms"].as_array().cloned().unwrap_or_default();
        let end = (offset + self.size).min(alarms.len());
        output["MetricAlarms"] = Value::Array(alarms.get(offset..end).map(<[_]>::to_vec).unwrap_or_default());
        if end < alarms.len() {
            output["NextToken"] = Value::String(end.to_string());
            self.pages.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Decoded = Result<Value, minicbor::decode::Error>;

/// One CBOR item as JSON (definite and indefinite lengths; a timestamp tag as its number).
fn decode(d: &mut minicbor::Decoder) -> Decoded {
    Ok(match d.datatype()? {
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null | Type::Undefined => {
            d.skip()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => Value::from(d.i64()?),
        Type::F16 | Type::F32 | Type::F64 => Number::from_f64(d.f64()?).map_or(Value::Null, Value::Number),
        Type::String | Type::StringIndef => {
            let mut s = String::new();
            for chunk in d.str_iter()? {
                s.push_str(chunk?);
            }
            Value::String(s)
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array()?;
            let mut items = Vec::new();
            while len.is_none_or(|n| (items.len() as u64) < n) {
                if len.is_none() && d.datatype()? == Type::Break {
                    d.skip()?;
                    break;
                }
                items.push(decode(d)?);
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map()?;
            let mut map = Map::new();
            let mut n = 0u64;
            while len.is_none_or(|l| n < l) {
                if len.is_none() && d.datatype()? == Type::Break {
                    d.skip()?;
                    break;
                }
                let key = d.str()?.to_owned();
                map.insert(key, decode(d)?);
                n += 1;
            }
            Value::Object(map)
        }
        Type::Tag => {
            d.tag()?;
            decode(d)?
        }
        other => {
            return Err(minicbor::decode::Error::message(format!(
                "unsupported CBOR type {other}"
            )));
        }
    })
}

/// JSON as CBOR, numbers keeping their kind (the SDK reads doubles as floats, counts as ints).
/// Timestamps are left out.
fn encode(e: &mut minicbor::Encoder<Vec<u8>>, v: &Value) {
    let done = match v {
        Value::Null => e.null().map(drop),
        Value::Bool(b) => e.bool(*b).map(drop),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => e.i64(i).map(drop),
            (_, Some(u), _) => e.u64(u).map(drop),
            (_, _, f) => e.f64(f.unwrap_or(f64::NAN)).map(drop),
        },
        Value::String(s) => e.str(s).map(drop),
        Value::Array(items) => {
            let r = e.array(items.len() as u64).map(drop);
            for i in items {
                encode(e, i);
            }
            r
        }
        Value::Object(map) => {
            let kept: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(k, v)| !k.ends_with("Timestamp") && !v.is_null())
                .collect();
            let r = e.map(kept.len() as u64).map(drop);
            for (k, v) in kept {
                let _ = e.str(k);
                encode(e, v);
            }
            r
        }
    };
    done.expect("writing CBOR to memory cannot fail");
}
