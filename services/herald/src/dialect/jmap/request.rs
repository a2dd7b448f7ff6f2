//! RFC 8887 client frames: `Request` (answered with a `Response`), push enable/disable,
//! and `RequestError` for input that is not JSON, not a request, or over a limit
//! (RFC 8620 §3.6.1). Pure functions, so every answer is unit-tested.

use serde_json::{json, Map, Value};

use super::DataType;

/// Capabilities a `Request`'s `using` may name: core (for `Core/echo`), the WebSocket
/// transport, and the data capabilities whose changes herald pushes.
const CAPABILITIES: &[&str] = &[
    "urn:ietf:params:jmap:core",
    "urn:ietf:params:jmap:websocket",
    "urn:ietf:params:jmap:mail",
    "urn:ietf:params:jmap:submission",
    "urn:ietf:params:jmap:calendars",
    "urn:ietf:params:jmap:contacts",
];

/// What a client frame asks for.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    /// Answer this `Response` (or `RequestError`) frame.
    Reply(Value),
    /// `WebSocketPushEnable`: push changes of these types (`None`: all), after catching up
    /// from `pushState` if given.
    Enable {
        /// `dataTypes`, `None` for every type.
        types: Option<Vec<DataType>>,
        /// `pushState` from an earlier connection.
        push_state: Option<String>,
    },
    /// `WebSocketPushDisable`.
    Disable,
}

/// A `RequestError` frame (RFC 8620 §3.6.1, RFC 8887 §4.3.4). `requestId` is always
/// there, `null` when the frame had no `id` (or did not parse), as RFC 8887's example
/// shows: a client can tell "not about any request" from a missing field.
pub fn request_error(kind: &str, detail: &str, request_id: Option<&Value>) -> Value {
    json!({
        "@type": "RequestError",
        "requestId": request_id.cloned().unwrap_or(Value::Null),
        "type": format!("urn:ietf:params:jmap:error:{kind}"),
        "status": 400,
        "detail": detail,
    })
}

/// The `limit` RequestError for a frame over `maxSizeRequest`.
pub fn too_big(max: usize) -> Value {
    let mut error = request_error(
        "limit",
        &format!("the request is over maxSizeRequest ({max} bytes): split it"),
        None,
    );
    error["limit"] = "maxSizeRequest".into();
    error
}

/// Reads one text frame.
pub fn parse(text: &str, max_calls: usize) -> ClientFrame {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return ClientFrame::Reply(request_error(
            "notJSON",
            "the frame is not valid JSON (RFC 8620 §3.6.1)",
            None,
        ));
    };
    let Value::Object(object) = value else {
        return ClientFrame::Reply(request_error(
            "notRequest",
            "the frame must be a JSON object with an \"@type\"",
            None,
        ));
    };
    match object.get("@type").and_then(Value::as_str) {
        Some("Request") => ClientFrame::Reply(answer(&object, max_calls)),
        Some("WebSocketPushEnable") => enable(&object),
        Some("WebSocketPushDisable") => ClientFrame::Disable,
        _ => ClientFrame::Reply(request_error(
            "notRequest",
            "\"@type\" must be \"Request\", \"WebSocketPushEnable\" or \"WebSocketPushDisable\"",
            object.get("id"),
        )),
    }
}

/// Reads `WebSocketPushEnable`; data types herald does not know are ignored, as RFC 8620
/// §7.2 lets servers ignore types they do not support.
fn enable(object: &Map<String, Value>) -> ClientFrame {
    let types = match object.get("dataTypes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(names)) => Some(
            names
                .iter()
                .filter_map(|n| serde_json::from_value::<DataType>(n.clone()).ok())
                .collect(),
        ),
        Some(_) => {
            return ClientFrame::Reply(request_error(
                "notRequest",
                "dataTypes must be null or a list of type names",
                None,
            ))
        }
    };
    let push_state = match object.get("pushState") {
        None | Some(Value::Null) => None,
        Some(Value::String(state)) => Some(state.clone()),
        Some(_) => {
            return ClientFrame::Reply(request_error(
                "notRequest",
                "pushState must be null or the string from an earlier StateChange",
                None,
            ))
        }
    };
    ClientFrame::Enable { types, push_state }
}

/// Answers a `Request`: `Core/echo` echoes its arguments; every other method gets an
/// `unknownMethod` error response in its place (RFC 8620 §3.6.2).
fn answer(object: &Map<String, Value>, max_calls: usize) -> Value {
    let request_id = object.get("id");
    let not_request = |detail: &str| request_error("notRequest", detail, request_id);
    let Some(using) = object.get("using").and_then(Value::as_array) else {
        return not_request("a Request needs \"using\": a list of capability URIs");
    };
    let Some(calls) = object.get("methodCalls").and_then(Value::as_array) else {
        return not_request("a Request needs \"methodCalls\": a list of [name, arguments, callId]");
    };
    if let Some(unknown) = using
        .iter()
        .find(|c| !c.as_str().is_some_and(|c| CAPABILITIES.contains(&c)))
    {
        return request_error(
            "unknownCapability",
            &format!("capability {unknown} is not supported here; known: {CAPABILITIES:?}"),
            request_id,
        );
    }
    if calls.len() > max_calls {
        let mut error = request_error(
            "limit",
            &format!(
                "{} method calls is over maxCallsInRequest ({max_calls})",
                calls.len()
            ),
            request_id,
        );
        error["limit"] = "maxCallsInRequest".into();
        return error;
    }
    let mut responses = Vec::with_capacity(calls.len());
    for call in calls {
        let Some([Value::String(name), Value::Object(arguments), Value::String(call_id)]) =
            call.as_array().map(Vec::as_slice)
        else {
            return not_request(
                "each method call must be [name (string), arguments (object), callId (string)]",
            );
        };
        responses.push(match name.as_str() {
            "Core/echo" => json!(["Core/echo", arguments, call_id]),
            _ => json!(["error", {"type": "unknownMethod"}, call_id]),
        });
    }
    let mut response = json!({
        "@type": "Response",
        "methodResponses": responses,
        "sessionState": "0",
    });
    if let Some(id) = request_id {
        response["requestId"] = id.clone();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Value {
        match parse(text, 4) {
            ClientFrame::Reply(v) => v,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn echo_is_answered_and_other_methods_are_unknown() {
        let r = reply(
            r#"{"@type":"Request","id":"r1","using":["urn:ietf:params:jmap:core"],
                "methodCalls":[["Core/echo",{"hello":true},"c1"],["Email/get",{},"c2"]]}"#,
        );
        assert_eq!(r["@type"], "Response");
        assert_eq!(r["requestId"], "r1");
        assert_eq!(
            r["methodResponses"][0],
            json!(["Core/echo", {"hello": true}, "c1"])
        );
        assert_eq!(
            r["methodResponses"][1],
            json!(["error", {"type": "unknownMethod"}, "c2"])
        );
    }

    #[test]
    fn bad_input_gets_the_matching_request_error() {
        let kind = |text: &str| reply(text)["type"].as_str().unwrap().to_owned();
        assert_eq!(kind("{not json"), "urn:ietf:params:jmap:error:notJSON");
        // RFC 8887 §5's example: `"requestId": null` when there is no request id.
        let not_json = reply("The quick brown fox jumps over the lazy dog.");
        assert_eq!(not_json["requestId"], Value::Null);
        assert!(not_json.as_object().unwrap().contains_key("requestId"));
        assert_eq!(not_json["status"], 400);
        assert_eq!(
            reply(r#"{"@type":"Bogus","id":"x1"}"#)["requestId"],
            "x1",
            "an id that can be read is echoed"
        );
        assert_eq!(kind("[1,2]"), "urn:ietf:params:jmap:error:notRequest");
        assert_eq!(
            kind(r#"{"@type":"Bogus"}"#),
            "urn:ietf:params:jmap:error:notRequest"
        );
        assert_eq!(
            kind(r#"{"@type":"Request","using":[],"methodCalls":[["Core/echo"]]}"#),
            "urn:ietf:params:jmap:error:notRequest"
        );
        assert_eq!(
            kind(r#"{"@type":"Request","using":["urn:x"],"methodCalls":[]}"#),
            "urn:ietf:params:jmap:error:unknownCapability"
        );
        let over = reply(
            r#"{"@type":"Request","using":[],"methodCalls":[
                ["Core/echo",{},"1"],["Core/echo",{},"2"],["Core/echo",{},"3"],
                ["Core/echo",{},"4"],["Core/echo",{},"5"]]}"#,
        );
        assert_eq!(over["type"], "urn:ietf:params:jmap:error:limit");
        assert_eq!(over["limit"], "maxCallsInRequest");
    }

    #[test]
    fn push_enable_reads_types_and_state() {
        assert_eq!(
            parse(
                r#"{"@type":"WebSocketPushEnable","dataTypes":["Mailbox","Nope"],"pushState":"42"}"#,
                4
            ),
            ClientFrame::Enable {
                types: Some(vec![DataType::Mailbox]),
                push_state: Some("42".into())
            }
        );
        assert_eq!(
            parse(r#"{"@type":"WebSocketPushEnable","dataTypes":null}"#, 4),
            ClientFrame::Enable {
                types: None,
                push_state: None
            }
        );
        assert_eq!(
            parse(r#"{"@type":"WebSocketPushDisable"}"#, 4),
            ClientFrame::Disable
        );
    }
}
