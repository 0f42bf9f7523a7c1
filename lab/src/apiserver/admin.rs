//! The lab's admin API under `/lab/`: flip faults and knobs, read request
//! counts, issue ServiceAccount tokens. Only the admin token may use it, and
//! it is exempt from the API faults so a test can always switch them off.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::Identity;
use super::status::{ApiError, ApiResult};
use super::{issue_token, read_body, value_response, Shared};
use crate::faults::{Fault, Knob, Latency};

/// Serve one `/lab/...` request.
pub(crate) async fn handle(shared: &Shared, identity: &Identity, req: Request) -> Response {
    match serve(shared, identity, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(shared: &Shared, identity: &Identity, req: Request) -> ApiResult<Response> {
    if !identity.admin {
        return Err(ApiError::forbidden(format!(
            "{} may not use the lab admin API: it needs the admin token",
            identity.username
        )));
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let body = read_body(body, 64 * 1024).await?;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    match (&parts.method, segs.as_slice()) {
        (&Method::PUT, ["lab", "faults", name]) => {
            let fault: Fault = name.parse().map_err(|e: crate::faults::UnknownName| ApiError::bad_request(e.to_string()))?;
            let on = match text.as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "the body must be `on` or `off`, not {other:?}"
                    )))
                }
            };
            shared.knobs.set_fault(fault, on);
            Ok(snapshot(shared))
        }
        (&Method::PUT, ["lab", "knobs", name]) => {
            let knob: Knob = name.parse().map_err(|e: crate::faults::UnknownName| ApiError::bad_request(e.to_string()))?;
            let latency: Latency = text.parse().map_err(|e: crate::faults::BadLatency| ApiError::bad_request(e.to_string()))?;
            knob.check(&latency).map_err(|e| ApiError::bad_request(e.to_string()))?;
            shared.knobs.set_latency(knob, latency);
            Ok(snapshot(shared))
        }
        (&Method::GET, ["lab", "knobs"]) => Ok(snapshot(shared)),
        (&Method::GET, ["lab", "requests"]) => {
            let counts = shared.counts.lock().clone();
            Ok(value_response(StatusCode::OK, &serde_json::to_value(&counts).unwrap_or(Value::Null)))
        }
        (&Method::POST, ["lab", "tokens"]) => {
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request(format!("expected {{\"namespace\":..,\"serviceAccount\":..}}: {e}")))?;
            let ns = v.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty());
            let sa = v.get("serviceAccount").and_then(Value::as_str).filter(|s| !s.is_empty());
            let (Some(ns), Some(sa)) = (ns, sa) else {
                return Err(ApiError::bad_request("both `namespace` and `serviceAccount` are required"));
            };
            Ok(value_response(StatusCode::OK, &json!({"token": issue_token(shared, ns, sa)})))
        }
        (_, ["lab", "faults", _] | ["lab", "knobs", _] | ["lab", "knobs"] | ["lab", "requests"] | ["lab", "tokens"]) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "unknown lab endpoint; known: PUT /lab/faults/{name}, PUT /lab/knobs/{name}, GET /lab/knobs, GET /lab/requests, POST /lab/tokens",
        )),
    }
}

fn snapshot(shared: &Shared) -> Response {
    value_response(
        StatusCode::OK,
        &serde_json::to_value(shared.knobs.snapshot()).unwrap_or(Value::Null),
    )
}
