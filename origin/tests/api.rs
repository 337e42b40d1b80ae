//! The REST API against a real node: envelope, auth, scoping, validation, bad bodies.

use serde_json::json;
use streamhub_testkit::{Origin, ADMIN_USER};

fn err_code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or("<no error envelope>")
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_apps_keys_tokens_ingress() {
    let origin = Origin::start().await;
    let anon = origin.api();

    // Login: wrong password 401, no token 401, garbage token 401.
    let r = anon
        .post(
            "/auth/login",
            json!({"username": ADMIN_USER, "password": "nope"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, err_code(&r.body)),
        (401, "unauthorized"),
        "{r:?}"
    );
    let r = anon.get("/apps").await.unwrap();
    assert_eq!((r.status, err_code(&r.body)), (401, "unauthorized"));
    let r = anon.with_token("not-a-jwt").get("/apps").await.unwrap();
    assert_eq!(r.status, 401);
    let admin = origin.admin().await;

    // Apps: create, validate names, conflict, get, patch, list.
    let r = admin.post("/apps", json!({"name": "shop"})).await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body["data"]["keyId"].as_str().unwrap().starts_with("ak_"));
    assert!(
        r.body["data"].get("secret").is_none(),
        "secret must not leak: {r:?}"
    );
    for bad in ["Shop", "a/b", "", "x".repeat(33).as_str(), "../etc"] {
        let r = admin.post("/apps", json!({"name": bad})).await.unwrap();
        assert_eq!(
            (r.status, err_code(&r.body)),
            (400, "bad_request"),
            "{bad:?}: {r:?}"
        );
    }
    let r = admin.post("/apps", json!({"name": "shop"})).await.unwrap();
    assert_eq!((r.status, err_code(&r.body)), (409, "conflict"));
    let r = admin
        .patch("/apps/shop", json!({"displayName": "The Shop"}))
        .await
        .unwrap();
    assert_eq!(
        (r.status, &r.body["data"]["displayName"]),
        (200, &json!("The Shop"))
    );
    admin.post("/apps", json!({"name": "other"})).await.unwrap();
    let r = admin.get("/apps").await.unwrap();
    let names: Vec<&str> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"shop") && names.contains(&"other"),
        "{names:?}"
    );
    let r = admin.get("/apps/nope").await.unwrap();
    assert_eq!((r.status, err_code(&r.body)), (404, "not_found"));

    // API keys: the secret once, hashed at rest; app-scoped keys are confined.
    let r = admin.post("/api-keys", json!({})).await.unwrap();
    assert_eq!(r.status, 400, "missing name: {r:?}");
    let r = admin
        .post("/api-keys", json!({"name": "ci", "app": "shop"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let scoped_secret = r.body["data"]["secret"].as_str().unwrap().to_string();
    let scoped_id = r.body["data"]["id"].as_str().unwrap().to_string();
    assert!(scoped_secret.starts_with("sk_"));
    let r = admin.get("/api-keys").await.unwrap();
    assert!(
        !r.body.to_string().contains(&scoped_secret),
        "secret listed: {r:?}"
    );
    let scoped = anon.with_token(&scoped_secret);
    assert_eq!(scoped.get("/apps/shop").await.unwrap().status, 200);
    let r = scoped.get("/apps/other").await.unwrap();
    assert_eq!((r.status, err_code(&r.body)), (403, "forbidden"));
    let r = scoped
        .post("/apps/other/tokens", json!({"room": "r", "identity": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = scoped.get("/apps").await.unwrap();
    assert_eq!(
        r.body["data"].as_array().unwrap().len(),
        1,
        "scoped list: {r:?}"
    );
    assert_eq!(
        scoped
            .post("/apps", json!({"name": "new"}))
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        scoped
            .post("/api-keys", json!({"name": "x"}))
            .await
            .unwrap()
            .status,
        403
    );

    // A global key works everywhere; an IP allow-list that excludes us is refused.
    let r = admin
        .post("/api-keys", json!({"name": "global"}))
        .await
        .unwrap();
    let global = anon.with_token(r.body["data"]["secret"].as_str().unwrap());
    assert_eq!(global.get("/apps/other").await.unwrap().status, 200);
    let r = admin
        .post(
            "/api-keys",
            json!({"name": "ipk", "allowIps": ["10.9.9.0/24"]}),
        )
        .await
        .unwrap();
    let fenced = anon.with_token(r.body["data"]["secret"].as_str().unwrap());
    assert_eq!(fenced.get("/apps").await.unwrap().status, 403);
    let r = admin
        .post(
            "/api-keys",
            json!({"name": "ipk2", "allowIps": ["127.0.0.1"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        anon.with_token(r.body["data"]["secret"].as_str().unwrap())
            .get("/apps")
            .await
            .unwrap()
            .status,
        200
    );
    let r = admin
        .post(
            "/api-keys",
            json!({"name": "bad", "allowIps": ["not-an-ip"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);

    // Deleting a key revokes it at once.
    assert_eq!(
        admin
            .delete(&format!("/api-keys/{scoped_id}"))
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(scoped.get("/apps/shop").await.unwrap().status, 401);

    // Tokens: LiveKit-shaped response, namespaced room, ttl forms, bad ttl.
    let r = admin
        .post(
            "/apps/shop/tokens",
            json!({"room": "demo", "identity": "phone-42", "canPublish": true, "canSubscribe": true, "ttl": "30m"}),
        )
        .await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let d = &r.body["data"];
    assert_eq!(d["room"], "shop-demo");
    assert_eq!(d["app"], "shop");
    for k in [
        "token", "wsUrl", "whipUrl", "whepUrl", "playUrl", "embedUrl",
    ] {
        assert!(
            d[k].as_str().is_some_and(|s| !s.is_empty()),
            "{k} missing: {d}"
        );
    }
    let claims = decode_jwt_payload(d["token"].as_str().unwrap());
    assert_eq!(claims["sub"], "phone-42");
    assert_eq!(claims["video"]["room"], "shop-demo");
    assert_eq!(claims["video"]["canPublish"], true);
    assert_eq!(claims["video"]["roomJoin"], true);
    let app = admin.get("/apps/shop").await.unwrap();
    assert_eq!(claims["iss"], app.body["data"]["keyId"]);
    let ttl = claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap();
    assert!((1800..=1806).contains(&ttl), "ttl {ttl}");
    let r = admin
        .post(
            "/apps/shop/tokens",
            json!({"room": "demo", "identity": "x", "ttl": 120}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    for bad in [json!("forever"), json!("0"), json!("99d")] {
        let r = admin
            .post(
                "/apps/shop/tokens",
                json!({"room": "demo", "identity": "x", "ttl": bad}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "ttl {bad}: {r:?}");
    }

    // Ingress: create, list, get, delete; only rtmp for now.
    let r = admin
        .post(
            "/apps/shop/ingress",
            json!({"type": "rtmp", "room": "stage", "name": "OBS"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let d = &r.body["data"];
    assert_eq!(d["roomName"], "shop-stage");
    assert_eq!(
        d["url"].as_str().unwrap(),
        format!("rtmp://127.0.0.1:{}/live", origin.config().rtmp.port())
    );
    assert!(d["streamKey"].as_str().unwrap().starts_with("rk_"));
    let id = d["ingressId"].as_str().unwrap().to_string();
    let list = admin.get("/apps/shop/ingress").await.unwrap();
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert!(
        list.body["data"][0].get("streamKey").is_none(),
        "key listed: {list:?}"
    );
    assert_eq!(
        admin
            .get(&format!("/apps/shop/ingress/{id}"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        admin
            .get(&format!("/apps/other/ingress/{id}"))
            .await
            .unwrap()
            .status,
        404
    );
    let r = admin
        .post("/apps/shop/ingress", json!({"type": "srt", "room": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        admin
            .delete(&format!("/apps/shop/ingress/{id}"))
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        admin
            .get(&format!("/apps/shop/ingress/{id}"))
            .await
            .unwrap()
            .status,
        404
    );

    // Deleting an app removes it.
    assert_eq!(admin.delete("/apps/other").await.unwrap().status, 204);
    assert_eq!(admin.get("/apps/other").await.unwrap().status, 404);
    assert_eq!(admin.get("/apps/shop/rooms").await.unwrap().status, 200);

    // Room objects without a publisher are listed on request only, with their state.
    let r = admin
        .post(
            "/apps/shop/rooms",
            json!({"name": "keynote", "title": "Keynote"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let live = admin.get("/apps/shop/rooms").await.unwrap();
    assert_eq!(live.data(), &json!([]), "only live rooms by default");
    let all = admin.get("/apps/shop/rooms?include=objects").await.unwrap();
    let keynote = &all.data()[0];
    assert_eq!(
        (&keynote["room"], &keynote["state"], &keynote["object"]),
        (&json!("keynote"), &json!("backstage"), &json!(true)),
        "{all:?}"
    );
    let r = admin
        .get("/apps/shop/rooms?include=everything")
        .await
        .unwrap();
    assert_eq!((r.status, err_code(&r.body)), (400, "bad_request"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_get_clear_errors() {
    let origin = Origin::start().await;
    let admin = origin.admin().await;
    // A setting this version does not know is refused, by name, and nothing changes: an
    // operator never believes it applied. The same rule holds on every write endpoint.
    let r = admin.create_app("x").await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let r = admin
        .patch("/apps/x", json!({"colour": "red", "bogus": 1}))
        .await
        .unwrap();
    assert_eq!((r.status, err_code(&r.body)), (400, "bad_request"), "{r:?}");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"colour\"") && message.contains("\"bogus\""),
        "{r:?}"
    );
    for (path, body) in [
        ("/apps", json!({"name": "y", "colour": "red"})),
        ("/api-keys", json!({"name": "k", "scope": "all"})),
        (
            "/apps/x/ingress",
            json!({"type": "rtmp", "room": "r", "latency": 1}),
        ),
        ("/apps/x/ws-ingest", json!({"room": "r", "fps": 5})),
        (
            "/apps/x/tokens",
            json!({"room": "r", "identity": "i", "admin": true}),
        ),
        (
            "/cluster/join-tokens",
            json!({"ttl": "1h", "role": "edge", "x": 1}),
        ),
        (
            "/auth/login",
            json!({"username": "admin", "password": "p", "otp": 1}),
        ),
    ] {
        let r = admin.post(path, body).await.unwrap();
        assert_eq!(
            (r.status, err_code(&r.body)),
            (400, "bad_request"),
            "{path}: {r:?}"
        );
    }
    let r = admin.get("/apps/x").await.unwrap();
    assert_eq!(
        r.body["data"]["displayName"],
        serde_json::Value::Null,
        "{r:?}"
    );
    assert_eq!(admin.get("/apps/y").await.unwrap().status, 404);
    let r = admin
        .post_raw("/apps", b"{not json".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!((r.status, err_code(&r.body)), (400, "bad_request"), "{r:?}");
    let r = admin
        .post_raw("/apps", b"{\"name\": 5}".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!((r.status, err_code(&r.body)), (400, "bad_request"), "{r:?}");
    assert!(r.body["error"]["message"].is_string(), "{r:?}");
    let r = admin
        .post_raw("/apps", b"name=x".to_vec(), "text/plain")
        .await
        .unwrap();
    assert_eq!(
        (r.status, err_code(&r.body)),
        (415, "unsupported_media_type")
    );
    let huge = format!("{{\"name\":\"{}\"}}", "a".repeat(200 * 1024));
    let r = admin
        .post_raw("/apps", huge.into_bytes(), "application/json")
        .await
        .unwrap();
    assert_eq!(
        (r.status, err_code(&r.body)),
        (413, "payload_too_large"),
        "{r:?}"
    );
    // The server answered before reading the whole body and closed that connection: go on with
    // a client that does not reuse it.
    let admin = origin.admin().await;
    let r = admin.get("/no-such-route").await.unwrap();
    assert_eq!((r.status, err_code(&r.body)), (404, "not_found"));
    // The node is still fine.
    assert_eq!(admin.get("/apps").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn hls_paths_reject_traversal_and_unknown_rooms() {
    let origin = Origin::start().await;
    let client = reqwest::Client::new();
    for (path, want) in [
        ("/hls/demo/nothere/index.m3u8", 404),
        ("/hls/demo/main/index.m3u8", 404),
        ("/hls/..%2F..%2Fetc/passwd/index.m3u8", 400),
        ("/hls/demo/main/..%2F..%2Fjwt-secret", 400),
        ("/hls/demo/main/seg-abc.m4s", 400),
        ("/hls/Demo/main/index.m3u8", 400),
    ] {
        let r = client.get(origin.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body["error"]["code"].is_string(),
            "{path}: no envelope: {body}"
        );
    }
}

fn decode_jwt_payload(t: &str) -> serde_json::Value {
    use base64::Engine;
    let p = t.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

/// Tokens come signed two ways; rotating an app's keys refuses every token signed before;
/// rotating the session key ends every session; both are refused to app-scoped keys.
#[tokio::test(flavor = "multi_thread")]
async fn token_signatures_and_key_rotation() {
    let origin = Origin::start().await;
    let admin = origin.admin().await;
    let anon = origin.api();
    let r = admin.post("/apps", json!({"name": "rot"})).await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let verify_key = r.body["data"]["verifyKey"].as_str().unwrap().to_string();
    let minter = admin.clone();
    let mint = |identity: &'static str| {
        let admin = minter.clone();
        async move {
            let r = admin
                .post(
                    "/apps/rot/tokens",
                    json!({"room": "cam", "identity": identity, "canSubscribe": true}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{r:?}");
            (
                r.body["data"]["token"].as_str().unwrap().to_string(),
                r.body["data"]["livekitToken"].as_str().unwrap().to_string(),
            )
        }
    };
    let (eddsa, hs256) = mint("v1").await;
    assert_eq!(jwt_alg(&eddsa), "EdDSA");
    assert_eq!(jwt_alg(&hs256), "HS256");
    assert_eq!(decode_jwt_payload(&eddsa), decode_jwt_payload(&hs256));
    // A token presented on a playback path is checked before the route answers (404: the room
    // is not live; 401: the token is refused). A token once verified is remembered for 30 s
    // (docs/security.md): the ones checked after the rotation are never presented before.
    let hls = |token: &str| {
        let url = origin.url(&format!("/hls/rot/cam/index.m3u8?token={token}"));
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    let (unused_eddsa, unused_hs256) = mint("v2").await;
    assert_eq!(hls(&eddsa).await, 404);
    assert_eq!(hls(&hs256).await, 404);
    assert_eq!(hls("x.y.z").await, 401, "a garbage token");
    let r = admin
        .post("/apps/rot/rotate-keys", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.body["data"]["verifyKey"].as_str().unwrap(), verify_key);
    for old in [&unused_eddsa, &unused_hs256] {
        assert_eq!(hls(old).await, 401, "a token signed before the rotation");
    }
    let (fresh, _) = mint("v3").await;
    assert_eq!(hls(&fresh).await, 404, "a token signed after the rotation");

    // Session key rotation: every session ends; a new login works.
    let r = admin
        .post("/api-keys", json!({"name": "scoped", "app": "rot"}))
        .await
        .unwrap();
    let scoped = anon.with_token(r.body["data"]["secret"].as_str().unwrap());
    let r = scoped
        .post("/auth/rotate-session-key", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin
        .post("/auth/rotate-session-key", json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(admin.get("/apps").await.unwrap().status, 401);
    let again = origin.admin().await;
    assert_eq!(again.get("/apps").await.unwrap().status, 200);
    // Logout ends this one; an API key cannot "log out".
    let r = again.post("/auth/logout", json!({})).await.unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(again.get("/apps").await.unwrap().status, 401);
    let r = scoped.post("/auth/logout", json!({})).await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
}

fn jwt_alg(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["alg"].as_str().unwrap().to_string()
}
