//! Small helpers for reading and asserting gateway responses, shared by the suites.
//!
//! They assert only the gateway's documented contract (the JSON error envelope, request-id
//! headers); what a particular test expects stays in the test.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::within;

/// The text of response header `name`; panics if it is missing or not text.
pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .expect("header value is text")
}

/// Sends `req` and returns status, headers and the JSON body.
pub async fn send_json(req: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let resp = within("gateway response", req.send())
        .await
        .expect("gateway answered");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = within("gateway response body", resp.bytes())
        .await
        .expect("response body");
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, headers, json)
}

/// Asserts the gateway's JSON error envelope (`{"error":{"code","message"},"requestId"}`, with
/// `requestId` equal to the `x-request-id` and `x-ms-request-id` headers) and returns the id.
pub fn assert_error_body(headers: &HeaderMap, body: &Value, code: &str) -> String {
    assert_eq!(header(headers, "content-type"), "application/json");
    assert_eq!(header(headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(headers, "cache-control"), "no-store");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message present: {body}"
    );
    let id = header(headers, "x-request-id");
    assert_eq!(
        body["requestId"], id,
        "requestId is the x-request-id header"
    );
    assert_eq!(header(headers, "x-ms-request-id"), id);
    id.to_owned()
}

/// Whether `text` is a hyphenated UUID of version 4 (the gateway's generated request ids).
pub fn is_uuid_v4(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok_and(|u| u.get_version_num() == 4)
}
