//! The origin as an AWS Lambda function: the same binary, chosen by the environment the Lambda
//! service sets, answering API Gateway (HTTP API) events through the real runtime crate.

use edgeauth_e2e::{
    lambda::{alb_event, LambdaOrigin},
    origin_binary,
};
use serde_json::{json, Value};

fn body_of(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

/// The client address of the `login` event in a `GET /v1/me/audit` answer.
fn login_client_ip(audit: &Value) -> Value {
    let events = body_of(audit)["events"].clone();
    events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"] == "login")
        .unwrap_or_else(|| panic!("no login event in {events}"))["client_ip"]
        .clone()
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
    assert_eq!(login_client_ip(&audit), "203.0.113.9");

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

/// Behind an ALB there is no source address in the event: the address the ALB saw, the last
/// `X-Forwarded-For` entry, is the client's, so clients do not all share one rate-limit budget
/// and the audit log names them.
#[tokio::test]
async fn behind_an_alb_the_forwarded_address_is_the_client() {
    let origin = LambdaOrigin::start(&origin_binary()).await;
    let email = format!("alb-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials = json!({"email": email, "password": "correct horse battery staple"});
    // The first entry is whatever the client claimed; the ALB appended the last.
    let from = |client: &'static str| {
        [
            ("content-type", "application/json"),
            ("x-forwarded-for", client),
        ]
    };
    let registered = origin
        .invoke(alb_event(
            "POST",
            "/v1/register",
            &from("10.0.0.1, 192.0.2.77"),
            Some(&credentials),
        ))
        .await;
    assert_eq!(registered["statusCode"], 201, "{registered}");
    let login = origin
        .invoke(alb_event(
            "POST",
            "/v1/login",
            &from("10.0.0.1, 192.0.2.77"),
            Some(&credentials),
        ))
        .await;
    assert_eq!(login["statusCode"], 200, "{login}");
    let token = body_of(&login)["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let bearer = format!("Bearer {token}");
    let audit = origin
        .invoke(alb_event(
            "GET",
            "/v1/me/audit",
            &[
                ("authorization", bearer.as_str()),
                ("x-forwarded-for", "192.0.2.77"),
            ],
            None,
        ))
        .await;
    assert_eq!(login_client_ip(&audit), "192.0.2.77");

    // Ten wrong passwords spend one client's login budget (10 a minute), not another's.
    let wrong = json!({"email": email, "password": "not the password at all"});
    for _ in 0..10 {
        let answer = origin
            .invoke(alb_event(
                "POST",
                "/v1/login",
                &from("198.51.100.1"),
                Some(&wrong),
            ))
            .await;
        assert_eq!(answer["statusCode"], 401, "{answer}");
    }
    let spent = origin
        .invoke(alb_event(
            "POST",
            "/v1/login",
            &from("198.51.100.1"),
            Some(&wrong),
        ))
        .await;
    assert_eq!(spent["statusCode"], 429, "{spent}");
    let other = origin
        .invoke(alb_event(
            "POST",
            "/v1/login",
            &from("198.51.100.2"),
            Some(&credentials),
        ))
        .await;
    assert_eq!(other["statusCode"], 200, "{other}");
    assert!(origin.api.errors().is_empty(), "{:?}", origin.api.errors());
}
