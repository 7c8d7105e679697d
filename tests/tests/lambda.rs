//! The origin as an AWS Lambda function: the same binary, chosen by the environment the Lambda
//! service sets, answering API Gateway (HTTP API) events through the real runtime crate.

use edgeauth_e2e::{lambda::LambdaOrigin, origin_binary};
use serde_json::{json, Value};

fn body_of(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_origin_answers_api_gateway_events_as_a_lambda_function() {
    let origin = LambdaOrigin::start(&origin_binary()).await;
    let email = format!("lambda-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials = json!({"email": email, "password": "correct horse battery staple"});
    let json_type = [("content-type", "application/json")];

    let registered = origin
        .call("POST", "/v1/register", &json_type, Some(&credentials))
        .await;
    assert_eq!(registered["statusCode"], 201, "{registered}");

    let login = origin
        .call("POST", "/v1/login", &json_type, Some(&credentials))
        .await;
    assert_eq!(login["statusCode"], 200, "{login}");
    let token = body_of(&login)["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    // HTTP API responses carry cookies in their own field.
    let cookies = login["cookies"].to_string() + &login["headers"].to_string();
    assert!(cookies.contains("refresh_token="), "{login}");

    let jwks = origin
        .call("GET", "/.well-known/jwks.json", &[], None)
        .await;
    assert_eq!(jwks["statusCode"], 200);
    assert_eq!(body_of(&jwks)["keys"].as_array().map(Vec::len), Some(1));

    let bearer = format!("Bearer {token}");
    let me = origin
        .call("GET", "/v1/me", &[("authorization", &bearer)], None)
        .await;
    assert_eq!(me["statusCode"], 200, "{me}");
    assert_eq!(body_of(&me)["email"], email.as_str());

    // The client address is API Gateway's source address, and the login's audit event was
    // stored before its answer went (the environment may be frozen between invocations).
    let audit = origin
        .call("GET", "/v1/me/audit", &[("authorization", &bearer)], None)
        .await;
    let events = body_of(&audit)["events"].clone();
    let login_event = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == "login")
        .unwrap_or_else(|| panic!("no login event in {events}"));
    assert_eq!(login_event["client_ip"], "203.0.113.9");

    let refused = origin
        .call(
            "GET",
            "/v1/me",
            &[("authorization", "Bearer not.a.token")],
            None,
        )
        .await;
    assert_eq!(refused["statusCode"], 401);
    assert!(origin.api.errors().is_empty(), "{:?}", origin.api.errors());
}
