//! A loopback proxy in front of the emulator that speaks CloudWatch's wire protocol. The Rust SDK
//! sends CloudWatch calls as Smithy RPC v2 CBOR (`POST /service/GraniteServiceVersion20100801/
//! operation/<Op>`); the emulator speaks only CloudWatch's Query and JSON protocols (moto issue
//! 9195: no CBOR support planned). The shim re-encodes each request body from CBOR to JSON, sends
//! it to the emulator as the JSON protocol (`X-Amz-Target: GraniteServiceVersion20100801.<Op>`),
//! and re-encodes the answer to CBOR (timestamps, numbers in the JSON protocol, become CBOR
//! tag 1). Alarms, their states and every decision are the emulator's; only the encoding is
//! hand-written, because the emulator cannot decode it.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Number, Value};

const OPERATION_PATH: &str = "/service/GraniteServiceVersion20100801/operation/";

#[derive(Debug, Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
}

/// Starts the shim in front of `upstream`; returns its endpoint URL.
pub async fn start(upstream: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind shim");
    let shared = Shared {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::new(),
    };
    let app = axum::Router::new().fallback(forward).with_state(shared);
    let addr = listener.local_addr().expect("shim addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn forward(State(s): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some(op) = parts.uri.path().strip_prefix(OPERATION_PATH).map(str::to_owned) else {
        return (StatusCode::NOT_FOUND, "not a CloudWatch RPC v2 call").into_response();
    };
    let body: Bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let json = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        match decode(&mut &body[..]) {
            Some(v) => v,
            None => return (StatusCode::BAD_REQUEST, "malformed CBOR").into_response(),
        }
    };
    let mut upstream = s
        .http
        .post(format!("{}/", s.upstream))
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", format!("GraniteServiceVersion20100801.{op}"))
        .body(json.to_string());
    // The emulator routes on the signature's credential scope (`monitoring`).
    if let Some(auth) = parts.headers.get("authorization") {
        upstream = upstream.header("authorization", auth);
    }
    let Ok(answer) = upstream.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::Object(Map::new()));
    let mut out = Vec::new();
    encode(&value, false, &mut out);
    (
        status,
        [("content-type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")],
        out,
    )
        .into_response()
}

/// One CBOR data item as JSON: the subset the SDK sends (definite or indefinite lengths, no
/// byte strings in CloudWatch's alarm calls; a tag's content stands for the tag).
fn decode(input: &mut &[u8]) -> Option<Value> {
    let (&first, rest) = input.split_first()?;
    *input = rest;
    let (major, info) = (first >> 5, first & 0x1f);
    if major == 7 {
        return match info {
            20 => Some(Value::Bool(false)),
            21 => Some(Value::Bool(true)),
            22 | 23 => Some(Value::Null),
            25 => take(input, 2)
                .map(|b| half(u16::from_be_bytes([b[0], b[1]])))
                .and_then(float),
            26 => take(input, 4)
                .map(|b| f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                .and_then(float),
            27 => take(input, 8)
                .map(|b| f64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                .and_then(float),
            _ => None,
        };
    }
    let indefinite = info == 31;
    let arg = if indefinite { 0 } else { argument(info, input)? };
    let items = |input: &mut &[u8], n: u64, f: &mut dyn FnMut(&mut &[u8]) -> Option<()>| -> Option<()> {
        if indefinite {
            while input.first() != Some(&0xff) {
                f(input)?;
            }
            *input = &input[1..];
        } else {
            for _ in 0..n {
                f(input)?;
            }
        }
        Some(())
    };
    match major {
        0 => Some(Value::Number(arg.into())),
        1 => Some(Value::Number((-1 - i64::try_from(arg).ok()?).into())),
        2 | 3 => {
            let mut bytes = Vec::new();
            items(input, 1, &mut |input| {
                if indefinite {
                    match decode(input)? {
                        Value::String(chunk) => bytes.extend(chunk.into_bytes()),
                        _ => return None,
                    }
                } else {
                    bytes.extend(take(input, usize::try_from(arg).ok()?)?);
                }
                Some(())
            })?;
            String::from_utf8(bytes).ok().map(Value::String)
        }
        4 => {
            let mut out = Vec::new();
            items(input, arg, &mut |input| {
                out.push(decode(input)?);
                Some(())
            })?;
            Some(Value::Array(out))
        }
        5 => {
            let mut out = Map::new();
            items(input, arg, &mut |input| {
                let Value::String(k) = decode(input)? else { return None };
                out.insert(k, decode(input)?);
                Some(())
            })?;
            Some(Value::Object(out))
        }
        6 => decode(input),
        _ => None,
    }
}

fn argument(info: u8, input: &mut &[u8]) -> Option<u64> {
    Some(match info {
        0..=23 => u64::from(info),
        24 => u64::from(take(input, 1)?[0]),
        25 => u64::from(u16::from_be_bytes(take(input, 2)?.try_into().ok()?)),
        26 => u64::from(u32::from_be_bytes(take(input, 4)?.try_into().ok()?)),
        27 => u64::from_be_bytes(take(input, 8)?.try_into().ok()?),
        _ => return None,
    })
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn half(bits: u16) -> f64 {
    let exp = i32::from((bits >> 10) & 0x1f);
    let mant = f64::from(bits & 0x3ff);
    let v = match exp {
        0 => mant * 2f64.powi(-24),
        31 => f64::INFINITY,
        _ => (mant + 1024.0) * 2f64.powi(exp - 25),
    };
    if bits & 0x8000 != 0 { -v } else { v }
}

fn float(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

/// JSON as CBOR. `timestamp`: the value is a member whose name ends in `Timestamp`, which the JSON
/// protocol sends as epoch seconds and RPC v2 CBOR as tag 1.
fn encode(v: &Value, timestamp: bool, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Number(n) if timestamp => {
            out.push(0xc1);
            out.push(0xfb);
            out.extend(n.as_f64().unwrap_or(0.0).to_be_bytes());
        }
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => head(0, u, out),
            (None, Some(i)) => head(1, (-1 - i) as u64, out),
            _ => {
                out.push(0xfb);
                out.extend(n.as_f64().unwrap_or(0.0).to_be_bytes());
            }
        },
        Value::String(s) => {
            head(3, s.len() as u64, out);
            out.extend(s.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode(item, timestamp, out);
            }
        }
        Value::Object(map) => {
            head(5, map.len() as u64, out);
            for (k, item) in map {
                head(3, k.len() as u64, out);
                out.extend(k.as_bytes());
                encode(item, k.ends_with("Timestamp"), out);
            }
        }
    }
}

#[test]
fn cbor_round_trips_through_json() {
    // GIVEN a JSON document WHEN encoded to CBOR and decoded THEN it is the same document
    let doc =
        serde_json::json!({"AlarmNames": ["a", "b"], "MaxRecords": 300, "Neg": -5, "F": 1.5, "T": true, "N": null});
    let mut out = Vec::new();
    encode(&doc, false, &mut out);
    assert_eq!(decode(&mut &out[..]), Some(doc));
}
