//! The end of an account and the guard on what can end it: deletion, the data export, turning
//! the second factor off, new recovery codes, and the re-authentication all of them ask.

use super::*;

/// Forces the password on every action that asks for re-authentication.
const NO_RECENT_LOGIN: (&str, &str) = ("EDGEAUTH_REAUTHENTICATION_MAX_AGE_SECONDS", "0");
/// Room for a test's logins and re-authentications, which spend one budget.
const MANY_LOGINS: (&str, &str) = (
    "EDGEAUTH_RATE_LIMITS",
    r#"{"login":{"count":100,"per_seconds":60}}"#,
);

impl Origin {
    /// A request with a bearer token and a JSON body, from `client` behind one trusted proxy.
    async fn as_client(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
        client: &str,
    ) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-forwarded-for", client)
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }

    /// Registers and logs in: the access and refresh tokens.
    async fn signed_in(&self, email: &str, password: &str) -> (String, String) {
        self.register(email, password).await;
        let r = self
            .post(
                "/v1/login",
                json!({"email": email, "password": password, "refresh_token_in_body": true}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        (
            r.body["access_token"].as_str().expect("token").to_string(),
            r.body["refresh_token"].as_str().expect("token").to_string(),
        )
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn user_id_of(token: &str) -> edgeauth_origin::store::UserId {
    let sub = claims_of(token)["sub"].as_str().expect("sub").to_string();
    edgeauth_origin::store::UserId(uuid::Uuid::parse_str(&sub).expect("uuid"))
}

#[tokio::test]
async fn a_deleted_account_is_gone_everywhere_and_its_address_registers_again() {
    let o = origin_with(&[BEHIND_ONE_PROXY, NO_RECENT_LOGIN]).await;
    let (token, refresh) = o.signed_in("ada@example.com", "ada's passphrase").await;
    let (other_device, other_refresh) = {
        let r = o
            .post(
                "/v1/login",
                json!({"email": "ada@example.com", "password": "ada's passphrase", "refresh_token_in_body": true}),
            )
            .await;
        (
            r.body["access_token"].as_str().expect("token").to_string(),
            r.body["refresh_token"].as_str().expect("token").to_string(),
        )
    };
    let id = user_id_of(&token);
    // A cached profile, to be gone with the account.
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &token, None).await.status,
        StatusCode::OK
    );
    o.as_client(
        "PATCH",
        "/v1/me",
        &token,
        json!({"display_name": "Ada"}),
        "203.0.113.9",
    )
    .await;

    // The access token alone deletes nothing, nor does a wrong password.
    let r = o
        .as_client("DELETE", "/v1/me", &token, json!({}), "203.0.113.9")
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("insufficient_user_authentication")
        )
    );
    let challenge = r.headers[header::WWW_AUTHENTICATE].to_str().expect("ascii");
    assert!(challenge.contains("max_age=0"), "{challenge}");
    let r = o
        .as_client(
            "DELETE",
            "/v1/me",
            &token,
            json!({"password": "not ada's"}),
            "203.0.113.9",
        )
        .await;
    assert_eq!(r.body["error"], "invalid_credentials");
    assert!(o.state.users.get_user(id).await.expect("store").is_some());

    let r = o
        .as_client(
            "DELETE",
            "/v1/me",
            &token,
            json!({"password": "ada's passphrase"}),
            "203.0.113.9",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);

    // Every access token is refused by the origin and, through the feed, by the edges.
    for access in [&token, &other_device] {
        let r = o.with_bearer("GET", "/v1/me", access, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
        assert_eq!(r.body["reason"], "user_tokens_revoked");
    }
    match first_feed_revocation(&o).await {
        Revocation::User {
            subject,
            revoked_through,
            ..
        } => {
            assert_eq!(subject, id.to_string());
            assert!(revoked_through >= claims_of(&other_device)["iat"].as_i64().expect("iat"));
        }
        other => panic!("expected a revoke-all, got {other:?}"),
    }
    // No refresh token is exchanged, and none is left stored.
    for r in [&refresh, &other_refresh] {
        let answer = o
            .post("/v1/token/refresh", json!({"refresh_token": r}))
            .await;
        assert_eq!(answer.body["error"], "invalid_grant");
        let now = edgeauth_origin::clock::now();
        assert!(o
            .state
            .refresh
            .get(&token_hash(r), now)
            .await
            .expect("store")
            .is_none());
    }
    // The account, its address and its cached profile are gone.
    assert!(o.state.users.get_user(id).await.expect("store").is_none());
    assert!(o
        .state
        .users
        .find_by_email("ada@example.com")
        .await
        .expect("store")
        .is_none());
    let cached = o
        .state
        .profile_cache
        .get(id, edgeauth_origin::clock::now())
        .await
        .expect("cache");
    assert!(cached.profile.is_none());
    assert_eq!(
        o.login("ada@example.com", "ada's passphrase").await.body["error"],
        "invalid_credentials"
    );
    // Its security record stays, under its random id, with networks instead of addresses.
    o.state.audit.flush().await;
    let events = o
        .state
        .audit
        .for_user(&id.to_string(), 100)
        .await
        .expect("audit");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"account_deleted"), "{names:?}");
    assert!(names.contains(&"account_deletion_failed"), "{names:?}");
    for event in &events {
        assert_ne!(event.client_ip.as_deref(), Some("203.0.113.9"), "{event:?}");
    }
    assert!(events
        .iter()
        .any(|e| e.client_ip.as_deref() == Some("203.0.113.0/24")));
    // The address is free: someone may register it anew, as another account.
    let again = o.register("ada@example.com", "a new passphrase").await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    assert_ne!(again.body["user_id"], id.to_string());
}

#[tokio::test]
async fn a_deletion_that_failed_part_way_is_finished_by_a_retry_with_the_same_token() {
    // The profile cache is down: the deletion stops after the sessions ended (503) ...
    let o = origin_with(&[("EDGEAUTH_REDIS_CACHE_URL", "redis://127.0.0.1:1")]).await;
    let (token, refresh) = o.signed_in("bo@example.com", "bo's passphrase").await;
    let id = user_id_of(&token);
    let proof = json!({"password": "bo's passphrase"});
    let r = o
        .with_bearer("DELETE", "/v1/me", &token, Some(proof.clone()))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // ... with every session already ended, and the account still there to retry.
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &token, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.post("/v1/token/refresh", json!({"refresh_token": refresh}))
            .await
            .body["error"],
        "invalid_grant"
    );
    assert!(o.state.users.get_user(id).await.expect("store").is_some());
    // Once the cache answers, the same token and password finish the deletion.
    let mut state = o.state.clone();
    state.profile_cache =
        std::sync::Arc::new(edgeauth_origin::store::profile_cache::MemoryProfileCache::default());
    let o = Origin {
        router: app(state.clone()),
        state,
        data_dir: o.data_dir.clone(),
    };
    let r = o
        .with_bearer("DELETE", "/v1/me", &token, Some(proof.clone()))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert!(o.state.users.get_user(id).await.expect("store").is_none());
    // Once done, the token deletes nothing more: there is no account behind it.
    let r = o.with_bearer("DELETE", "/v1/me", &token, Some(proof)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_recent_login_stands_in_for_the_password_and_an_older_one_does_not() {
    let o = origin_with(&[("EDGEAUTH_REAUTHENTICATION_MAX_AGE_SECONDS", "1")]).await;
    let (token, _) = o.signed_in("cy@example.com", "cy's passphrase").await;
    // Just logged in: the password may be left out.
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/password",
            &token,
            Some(json!({"new_password": "cy's second passphrase"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    // Past the window the login is too old: the password is asked, and a wrong one refused.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/password",
            &token,
            Some(json!({"new_password": "cy's third passphrase"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("insufficient_user_authentication")
        )
    );
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/password",
            &token,
            Some(json!({"current_password": "cy's passphrase", "new_password": "cy's third passphrase"})),
        )
        .await;
    assert_eq!(r.body["error"], "invalid_credentials");
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/password",
            &token,
            Some(json!({"current_password": "cy's second passphrase", "new_password": "cy's third passphrase"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(
        o.login("cy@example.com", "cy's third passphrase")
            .await
            .status,
        StatusCode::OK
    );
    // Enrolling a factor asks the same.
    let r = o.with_bearer("POST", "/v1/me/mfa/totp", &token, None).await;
    assert_eq!(r.body["error"], "insufficient_user_authentication");
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/mfa/totp",
            &token,
            Some(json!({"password": "cy's third passphrase"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn the_factor_is_turned_off_and_codes_replaced_only_with_a_code() {
    let o = origin_with(&[NO_RECENT_LOGIN, MANY_LOGINS]).await;
    o.register("di@example.com", "di's passphrase").await;
    // Enrolment needs the password here, as a session older than the window would.
    let token = o.login("di@example.com", "di's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let (secret, old_codes) = o
        .enrol_totp(&token, Some(json!({"password": "di's passphrase"})))
        .await;
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let code = |offset: u64| edgeauth_origin::mfa::code_at(&secret, now + offset);

    // The password alone, or with a wrong code, turns nothing off.
    let off = |body: Value| o.with_bearer("DELETE", "/v1/me/mfa/totp", &token, Some(body));
    let r = off(json!({"password": "di's passphrase"})).await;
    assert_eq!(r.body["error"], "mfa_required");
    let r = off(json!({"password": "di's passphrase", "otp": "000000"})).await;
    assert_eq!(r.body["error"], "invalid_otp");
    let r = off(json!({"otp": code(30)})).await;
    assert_eq!(r.body["error"], "insufficient_user_authentication");
    assert!(o
        .state
        .users
        .find_by_email("di@example.com")
        .await
        .expect("store")
        .and_then(|u| u.totp)
        .is_some_and(|t| t.confirmed));

    // New recovery codes, with a recovery code: the old ones stop working.
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/mfa/recovery-codes",
            &token,
            Some(json!({"password": "di's passphrase", "recovery_code": old_codes[0]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let new_codes = r.body["recovery_codes"].as_array().expect("codes").clone();
    assert_eq!(new_codes.len(), 10);
    let login = |extra: Value| {
        let mut body = json!({"email": "di@example.com", "password": "di's passphrase"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        o.post("/v1/login", body)
    };
    assert_eq!(
        login(json!({"recovery_code": old_codes[1]})).await.body["error"],
        "invalid_otp"
    );
    assert_eq!(
        login(json!({"recovery_code": new_codes[0]})).await.status,
        StatusCode::OK
    );

    // With the password and a code it goes; login then asks for the password only.
    let r = off(json!({"password": "di's passphrase", "otp": code(30)})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(login(json!({})).await.status, StatusCode::OK);
    // Without a factor there are no codes to replace.
    let r = o
        .with_bearer(
            "POST",
            "/v1/me/mfa/recovery-codes",
            &token,
            Some(json!({"password": "di's passphrase"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("mfa_not_enabled"))
    );
    o.state.audit.flush().await;
    let events: Vec<String> = o
        .state
        .audit
        .for_user(&user_id_of(&token).to_string(), 50)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(events.iter().any(|e| e == "mfa_disabled"), "{events:?}");
    assert!(
        events.iter().any(|e| e == "recovery_codes_replaced"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_recent_login_stands_in_for_the_factor_only_if_it_passed_it() {
    let o = origin().await;
    let (token, _) = o.signed_in("eve@example.com", "eve's passphrase").await;
    // Enrolled from a session that logged in seconds ago, with the password alone.
    let (secret, _) = o.enrol_totp(&token, None).await;
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let code = |offset: u64| edgeauth_origin::mfa::code_at(&secret, now + offset);
    // That session is recent but never passed the factor: it cannot turn it off unproven.
    let r = o
        .with_bearer("DELETE", "/v1/me/mfa/totp", &token, Some(json!({})))
        .await;
    assert_eq!(r.body["error"], "insufficient_user_authentication");
    // A session that passed it a moment ago may.
    let with_code = o
        .post(
            "/v1/login",
            json!({"email": "eve@example.com", "password": "eve's passphrase", "otp": code(30)}),
        )
        .await;
    let mfa_token = with_code.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = o
        .with_bearer("DELETE", "/v1/me/mfa/totp", &mfa_token, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
}

#[tokio::test]
async fn the_export_holds_the_users_data_and_no_credential() {
    let o = origin_with(&[BEHIND_ONE_PROXY]).await;
    let (token, _) = o.signed_in("flo@example.com", "flo's passphrase").await;
    o.as_client(
        "PATCH",
        "/v1/me",
        &token,
        json!({"display_name": "Flo"}),
        "198.51.100.4",
    )
    .await;
    o.state.audit.flush().await;
    let r = o.with_bearer("GET", "/v1/me/export", &token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.headers[header::CONTENT_DISPOSITION]
        .to_str()
        .expect("ascii")
        .starts_with("attachment"));
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let account = &r.body["account"];
    assert_eq!(account["email"], "flo@example.com");
    assert_eq!(account["display_name"], "Flo");
    assert_eq!(account["user_id"], claims_of(&token)["sub"]);
    assert_eq!(r.body["sessions"].as_array().expect("sessions").len(), 1);
    let events: Vec<&str> = r.body["security_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(events.contains(&"login"), "{events:?}");
    // Credentials are not data about the person: no hash, no secret.
    let user = o
        .state
        .users
        .get_user(user_id_of(&token))
        .await
        .expect("store")
        .expect("account");
    assert!(
        !r.text.contains(&user.password_hash),
        "the export holds the password hash"
    );
    assert!(!r.text.contains("argon2"), "{}", r.text);
    // The token of another user exports nothing of this one: the id comes from `sub` only.
    let anonymous = o.get("/v1/me/export").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
