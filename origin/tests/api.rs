//! The REST API against a real node: envelope, auth, scoping, validation, bad bodies.

mod common;

use common::*;
use serde_json::json;

fn err_code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or("<no error envelope>")
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_apps_keys_tokens_ingress() {
    let origin = Origin::start().await;
    let anon = Api::new(&origin, None);

    // Login: wrong password 401, no token 401, garbage token 401.
    let r = anon
        .post(
            "/api/v1/auth/login",
            json!({"username": ADMIN_USER, "password": "nope"}),
        )
        .await;
    assert_eq!((r.0, err_code(&r.1)), (401, "unauthorized"), "{r:?}");
    let r = anon.get("/api/v1/apps").await;
    assert_eq!((r.0, err_code(&r.1)), (401, "unauthorized"));
    let r = anon.with_token("not-a-jwt").get("/api/v1/apps").await;
    assert_eq!(r.0, 401);
    let admin = origin.admin().await;

    // Apps: create, validate names, conflict, get, patch, list.
    let r = admin.post("/api/v1/apps", json!({"name": "shop"})).await;
    assert_eq!(r.0, 201, "{r:?}");
    assert!(r.1["data"]["keyId"].as_str().unwrap().starts_with("ak_"));
    assert!(
        r.1["data"].get("secret").is_none(),
        "secret must not leak: {r:?}"
    );
    for bad in ["Shop", "a/b", "", "x".repeat(33).as_str(), "../etc"] {
        let r = admin.post("/api/v1/apps", json!({"name": bad})).await;
        assert_eq!(
            (r.0, err_code(&r.1)),
            (400, "bad_request"),
            "{bad:?}: {r:?}"
        );
    }
    let r = admin.post("/api/v1/apps", json!({"name": "shop"})).await;
    assert_eq!((r.0, err_code(&r.1)), (409, "conflict"));
    let r = admin
        .patch("/api/v1/apps/shop", json!({"displayName": "The Shop"}))
        .await;
    assert_eq!(
        (r.0, &r.1["data"]["displayName"]),
        (200, &json!("The Shop"))
    );
    admin.post("/api/v1/apps", json!({"name": "other"})).await;
    let r = admin.get("/api/v1/apps").await;
    let names: Vec<&str> = r.1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"shop") && names.contains(&"other"),
        "{names:?}"
    );
    let r = admin.get("/api/v1/apps/nope").await;
    assert_eq!((r.0, err_code(&r.1)), (404, "not_found"));

    // API keys: the secret once, hashed at rest; app-scoped keys are confined.
    let r = admin.post("/api/v1/api-keys", json!({})).await;
    assert_eq!(r.0, 400, "missing name: {r:?}");
    let r = admin
        .post("/api/v1/api-keys", json!({"name": "ci", "app": "shop"}))
        .await;
    assert_eq!(r.0, 201, "{r:?}");
    let scoped_secret = r.1["data"]["secret"].as_str().unwrap().to_string();
    let scoped_id = r.1["data"]["id"].as_str().unwrap().to_string();
    assert!(scoped_secret.starts_with("sk_"));
    let r = admin.get("/api/v1/api-keys").await;
    assert!(
        !r.1.to_string().contains(&scoped_secret),
        "secret listed: {r:?}"
    );
    let scoped = anon.with_token(&scoped_secret);
    assert_eq!(scoped.get("/api/v1/apps/shop").await.0, 200);
    let r = scoped.get("/api/v1/apps/other").await;
    assert_eq!((r.0, err_code(&r.1)), (403, "forbidden"));
    let r = scoped
        .post(
            "/api/v1/apps/other/tokens",
            json!({"room": "r", "identity": "x"}),
        )
        .await;
    assert_eq!(r.0, 403);
    let r = scoped.get("/api/v1/apps").await;
    assert_eq!(
        r.1["data"].as_array().unwrap().len(),
        1,
        "scoped list: {r:?}"
    );
    assert_eq!(
        scoped.post("/api/v1/apps", json!({"name": "new"})).await.0,
        403
    );
    assert_eq!(
        scoped
            .post("/api/v1/api-keys", json!({"name": "x"}))
            .await
            .0,
        403
    );

    // A global key works everywhere; an IP allow-list that excludes us is refused.
    let r = admin
        .post("/api/v1/api-keys", json!({"name": "global"}))
        .await;
    let global = anon.with_token(r.1["data"]["secret"].as_str().unwrap());
    assert_eq!(global.get("/api/v1/apps/other").await.0, 200);
    let r = admin
        .post(
            "/api/v1/api-keys",
            json!({"name": "ipk", "allowIps": ["10.9.9.0/24"]}),
        )
        .await;
    let fenced = anon.with_token(r.1["data"]["secret"].as_str().unwrap());
    assert_eq!(fenced.get("/api/v1/apps").await.0, 403);
    let r = admin
        .post(
            "/api/v1/api-keys",
            json!({"name": "ipk2", "allowIps": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(
        anon.with_token(r.1["data"]["secret"].as_str().unwrap())
            .get("/api/v1/apps")
            .await
            .0,
        200
    );
    let r = admin
        .post(
            "/api/v1/api-keys",
            json!({"name": "bad", "allowIps": ["not-an-ip"]}),
        )
        .await;
    assert_eq!(r.0, 400);

    // Deleting a key revokes it at once.
    assert_eq!(
        admin
            .delete(&format!("/api/v1/api-keys/{scoped_id}"))
            .await
            .0,
        204
    );
    assert_eq!(scoped.get("/api/v1/apps/shop").await.0, 401);

    // Tokens: LiveKit-shaped response, namespaced room, ttl forms, bad ttl.
    let r = admin
        .post(
            "/api/v1/apps/shop/tokens",
            json!({"room": "demo", "identity": "phone-42", "canPublish": true, "canSubscribe": true, "ttl": "30m"}),
        )
        .await;
    assert_eq!(r.0, 201, "{r:?}");
    let d = &r.1["data"];
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
    let app = admin.get("/api/v1/apps/shop").await;
    assert_eq!(claims["iss"], app.1["data"]["keyId"]);
    let ttl = claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap();
    assert!((1800..=1806).contains(&ttl), "ttl {ttl}");
    let r = admin
        .post(
            "/api/v1/apps/shop/tokens",
            json!({"room": "demo", "identity": "x", "ttl": 120}),
        )
        .await;
    assert_eq!(r.0, 201);
    for bad in [json!("forever"), json!("0"), json!("99d")] {
        let r = admin
            .post(
                "/api/v1/apps/shop/tokens",
                json!({"room": "demo", "identity": "x", "ttl": bad}),
            )
            .await;
        assert_eq!(r.0, 400, "ttl {bad}: {r:?}");
    }

    // Ingress: create, list, get, delete; only rtmp for now.
    let r = admin
        .post(
            "/api/v1/apps/shop/ingress",
            json!({"type": "rtmp", "room": "stage", "name": "OBS"}),
        )
        .await;
    assert_eq!(r.0, 201, "{r:?}");
    let d = &r.1["data"];
    assert_eq!(d["roomName"], "shop-stage");
    assert_eq!(
        d["url"].as_str().unwrap(),
        format!("rtmp://127.0.0.1:{}/live", origin.rtmp.port())
    );
    assert!(d["streamKey"].as_str().unwrap().starts_with("rk_"));
    let id = d["ingressId"].as_str().unwrap().to_string();
    let list = admin.get("/api/v1/apps/shop/ingress").await;
    assert_eq!(list.1["data"].as_array().unwrap().len(), 1);
    assert!(
        list.1["data"][0].get("streamKey").is_none(),
        "key listed: {list:?}"
    );
    assert_eq!(
        admin
            .get(&format!("/api/v1/apps/shop/ingress/{id}"))
            .await
            .0,
        200
    );
    assert_eq!(
        admin
            .get(&format!("/api/v1/apps/other/ingress/{id}"))
            .await
            .0,
        404
    );
    let r = admin
        .post(
            "/api/v1/apps/shop/ingress",
            json!({"type": "srt", "room": "x"}),
        )
        .await;
    assert_eq!(r.0, 400);
    assert_eq!(
        admin
            .delete(&format!("/api/v1/apps/shop/ingress/{id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        admin
            .get(&format!("/api/v1/apps/shop/ingress/{id}"))
            .await
            .0,
        404
    );

    // Deleting an app removes it.
    assert_eq!(admin.delete("/api/v1/apps/other").await.0, 204);
    assert_eq!(admin.get("/api/v1/apps/other").await.0, 404);
    assert_eq!(admin.get("/api/v1/apps/shop/rooms").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_get_clear_errors() {
    let origin = Origin::start().await;
    let admin = origin.admin().await;
    let r = admin
        .post_raw("/api/v1/apps", b"{not json".to_vec(), "application/json")
        .await;
    assert_eq!((r.0, err_code(&r.1)), (400, "bad_request"), "{r:?}");
    let r = admin
        .post_raw(
            "/api/v1/apps",
            b"{\"name\": 5}".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!((r.0, err_code(&r.1)), (400, "bad_request"), "{r:?}");
    assert!(r.1["error"]["message"].is_string(), "{r:?}");
    let r = admin
        .post_raw("/api/v1/apps", b"name=x".to_vec(), "text/plain")
        .await;
    assert_eq!((r.0, err_code(&r.1)), (415, "unsupported_media_type"));
    let huge = format!("{{\"name\":\"{}\"}}", "a".repeat(200 * 1024));
    let r = admin
        .post_raw("/api/v1/apps", huge.into_bytes(), "application/json")
        .await;
    assert_eq!((r.0, err_code(&r.1)), (413, "payload_too_large"), "{r:?}");
    let r = admin.get("/api/v1/no-such-route").await;
    assert_eq!((r.0, err_code(&r.1)), (404, "not_found"));
    // The node is still fine.
    assert_eq!(admin.get("/api/v1/apps").await.0, 200);
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
