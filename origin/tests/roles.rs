//! Users and roles against a real origin, the whole matrix of principals x roles x actions in
//! each `STREAMHUB_AUTHZ_ENFORCE` mode: `on` refuses (403) what a role may not do and nothing
//! changes; `log` lets it through and logs the would-be denial (principal, action, app, rule);
//! `off` lets it through and logs nothing. The expectations here are written from the issue's
//! role descriptions, not read from the product's policy table.

use serde_json::{json, Value};
use streamhub_testkit::{Api, Origin};

/// A role the matrix expects, ordered like the contract (viewer < operator < admin < owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum R {
    Viewer,
    Operator,
    Admin,
    Owner,
}

/// A principal of the matrix: its name, its role in app `shop` (or in every app: `star`), and
/// whether it is an app-scoped API key (which today's rules confine to its app).
struct Who {
    name: &'static str,
    shop: Option<R>,
    star: Option<R>,
    scoped_key: bool,
    /// A key without a role: today's keys, everything within their scope.
    unroled: bool,
}

const PRINCIPALS: &[Who] = &[
    Who {
        name: "u-viewer",
        shop: Some(R::Viewer),
        star: None,
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "u-operator",
        shop: Some(R::Operator),
        star: None,
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "u-admin",
        shop: Some(R::Admin),
        star: None,
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "u-owner",
        shop: Some(R::Owner),
        star: None,
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "u-outsider",
        shop: None,
        star: None,
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "u-global-admin",
        shop: None,
        star: Some(R::Admin),
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "k-operator",
        shop: Some(R::Operator),
        star: None,
        scoped_key: true,
        unroled: false,
    },
    Who {
        name: "k-global-viewer",
        shop: None,
        star: Some(R::Viewer),
        scoped_key: false,
        unroled: false,
    },
    Who {
        name: "k-unroled",
        shop: None,
        star: None,
        scoped_key: false,
        unroled: true,
    },
];

/// What each action needs: the least role, and whether it is node-wide (a `*` role only).
#[derive(Debug, Clone, Copy)]
enum Act {
    ReadApp,
    CreateIngress,
    CreateRoom,
    MintToken,
    RenameApp,
    CreateKey,
    CreateUser,
    SetQuotas,
    CreateApp,
    ReadCluster,
    CreateWebhook,
}

const ACTIONS: &[Act] = &[
    Act::ReadApp,
    Act::CreateIngress,
    Act::CreateRoom,
    Act::MintToken,
    Act::RenameApp,
    Act::CreateKey,
    Act::CreateUser,
    Act::SetQuotas,
    Act::CreateApp,
    Act::ReadCluster,
    Act::CreateWebhook,
];

impl Act {
    /// The least role, and node-wide or not (from the issue: owner = everything in the app incl.
    /// users and keys; admin = everything but users; operator = ingresses, rooms, go-live,
    /// recordings, no keys, no settings; viewer = read only; quotas set by global admins).
    fn needs(self) -> (R, bool) {
        match self {
            Act::ReadApp => (R::Viewer, false),
            Act::CreateIngress | Act::CreateRoom | Act::MintToken => (R::Operator, false),
            Act::RenameApp | Act::CreateKey | Act::CreateWebhook => (R::Admin, false),
            Act::CreateUser => (R::Owner, false),
            Act::SetQuotas | Act::CreateApp => (R::Admin, true),
            Act::ReadCluster => (R::Viewer, true),
        }
    }

    /// Whether the role rules allow `who` this.
    fn role_allows(self, who: &Who) -> bool {
        if who.unroled {
            return true;
        }
        let (least, node_wide) = self.needs();
        let held = if node_wide {
            who.star
        } else {
            who.shop.max(who.star)
        };
        held.is_some_and(|r| r >= least)
    }

    /// Whether today's key scoping refuses it whatever the mode (an app-scoped key on a
    /// node-wide operation, or on the API-key endpoints).
    fn scope_refuses(self, who: &Who) -> bool {
        who.scoped_key && matches!(self, Act::SetQuotas | Act::CreateApp | Act::CreateKey)
    }

    /// The action's words in the product's log line.
    fn logged_as(self) -> &'static str {
        match self {
            Act::ReadApp => "read",
            Act::CreateIngress => "manage ingresses",
            Act::CreateRoom => "manage rooms",
            Act::MintToken => "mint tokens",
            Act::RenameApp => "change app settings",
            Act::CreateKey => "manage keys",
            Act::CreateUser => "manage users",
            Act::SetQuotas => "set quotas",
            Act::CreateApp => "create or delete apps",
            Act::ReadCluster => "read the cluster",
            Act::CreateWebhook => "manage webhooks",
        }
    }

    /// Does it as `api` (a fresh name per principal); the HTTP status.
    async fn run(self, api: &Api, who: &str) -> u16 {
        let r = match self {
            Act::ReadApp => api.get("/apps/shop").await,
            Act::CreateIngress => {
                api.post(
                    "/apps/shop/ingress",
                    json!({"type": "rtmp", "room": format!("r-{who}")}),
                )
                .await
            }
            Act::CreateRoom => {
                api.post("/apps/shop/rooms", json!({"name": format!("room-{who}")}))
                    .await
            }
            Act::MintToken => {
                api.post("/apps/shop/tokens", json!({"room": "cam", "identity": who}))
                    .await
            }
            Act::RenameApp => api.patch("/apps/shop", json!({"displayName": who})).await,
            Act::CreateKey => {
                api.post(
                    "/api-keys",
                    json!({"name": format!("key-by-{who}"), "app": "shop", "role": "viewer"}),
                )
                .await
            }
            Act::CreateUser => {
                api.post(
                    "/users",
                    json!({"username": format!("by-{who}"), "password": "a-long-password-1",
                           "roles": [{"app": "shop", "role": "viewer"}]}),
                )
                .await
            }
            Act::SetQuotas => {
                api.send(
                    api.request(reqwest::Method::PUT, "/apps/shop/quotas")
                        .json(&json!({"ingresses": 1000 + who.len()})),
                )
                .await
            }
            Act::CreateApp => {
                api.post("/apps", json!({"name": format!("app-{who}")}))
                    .await
            }
            Act::ReadCluster => api.get("/cluster").await,
            Act::CreateWebhook => {
                api.post(
                    "/apps/shop/webhooks",
                    json!({"url": format!("https://hooks.example.com/{who}"), "events": ["*"]}),
                )
                .await
            }
        };
        r.expect("request").status
    }

    /// Whether what `who` tried left a trace in the state (read as the administrator); `None`
    /// for actions that change nothing.
    async fn changed(self, admin: &Api, who: &str) -> Option<bool> {
        let data = |r: streamhub_testkit::api::Reply| r.body["data"].clone();
        Some(match self {
            Act::ReadApp | Act::MintToken | Act::ReadCluster => return None,
            Act::CreateIngress => data(admin.get("/apps/shop/ingress").await.unwrap())
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["room"] == format!("r-{who}")),
            Act::CreateRoom => {
                admin
                    .get(&format!("/apps/shop/rooms/room-{who}"))
                    .await
                    .unwrap()
                    .status
                    == 200
            }
            Act::RenameApp => data(admin.get("/apps/shop").await.unwrap())["displayName"] == who,
            Act::CreateKey => data(admin.get("/api-keys").await.unwrap())
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["name"] == format!("key-by-{who}")),
            Act::CreateUser => data(admin.get("/users").await.unwrap())
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["username"] == format!("by-{who}")),
            Act::SetQuotas => {
                data(admin.get("/apps/shop/quotas").await.unwrap())["ingresses"]
                    == json!(1000 + who.len())
            }
            Act::CreateApp => admin.get(&format!("/apps/app-{who}")).await.unwrap().status == 200,
            Act::CreateWebhook => {
                let url = format!("https://hooks.example.com/{who}");
                let hooks = data(admin.get("/apps/shop/webhooks").await.unwrap());
                let made = hooks
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h["url"] == url)
                    .cloned();
                if let Some(h) = &made {
                    // An app has at most 10 endpoints: free the slot for the next principal.
                    let id = h["id"].as_str().unwrap();
                    let r = admin
                        .delete(&format!("/apps/shop/webhooks/{id}"))
                        .await
                        .unwrap();
                    assert_eq!(r.status, 204, "{r:?}");
                }
                made.is_some()
            }
        })
    }
}

fn role_name(r: R) -> &'static str {
    match r {
        R::Viewer => "viewer",
        R::Operator => "operator",
        R::Admin => "admin",
        R::Owner => "owner",
    }
}

/// Makes every principal through the administrator; their API clients and how the node's
/// logs name them.
async fn principals(origin: &Origin, admin: &Api) -> Vec<(&'static Who, Api, String)> {
    for app in ["shop", "other"] {
        assert_eq!(admin.create_app(app).await.unwrap().status, 201);
    }
    let mut out = Vec::new();
    for who in PRINCIPALS {
        let api = if who.name.starts_with("u-") {
            let mut roles: Vec<Value> = Vec::new();
            if let Some(r) = who.shop {
                roles.push(json!({"app": "shop", "role": role_name(r)}));
            }
            if let Some(r) = who.star {
                roles.push(json!({"app": "*", "role": role_name(r)}));
            }
            if who.name == "u-outsider" {
                roles.push(json!({"app": "other", "role": "owner"}));
            }
            let password = format!("pw-{}-0123456", who.name);
            let r = admin
                .post(
                    "/users",
                    json!({"username": who.name, "password": password, "roles": roles}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{r:?}");
            assert!(
                r.body.to_string().find("argon2").is_none(),
                "hash leaked: {r:?}"
            );
            let api = Api::login(&origin.url(""), who.name, &password)
                .await
                .unwrap();
            (api, format!("principal=user:{} ", who.name))
        } else {
            let mut body = json!({"name": who.name});
            if who.scoped_key {
                body["app"] = json!("shop");
            }
            if let Some(r) = who.shop.or(who.star) {
                body["role"] = json!(role_name(r));
            }
            let r = admin.post("/api-keys", body).await.unwrap();
            assert_eq!(r.status, 201, "{r:?}");
            let id = r.body["data"]["id"].as_str().unwrap();
            let label = format!(
                "principal=key:{id}{} ",
                if who.scoped_key { "@shop" } else { "" }
            );
            let api =
                Api::new(&origin.url("")).with_token(r.body["data"]["secret"].as_str().unwrap());
            (api, label)
        };
        let (api, label) = api;
        out.push((who, api, label));
    }
    out
}

async fn matrix(mode: &str) {
    let origin = Origin::start_with(|cfg| {
        cfg.env
            .push(("STREAMHUB_AUTHZ_ENFORCE".into(), mode.into()));
    })
    .await;
    let admin = origin.admin().await;
    let principals = principals(&origin, &admin).await;
    let mut failures = Vec::new();
    for act in ACTIONS {
        for (who, api, _) in &principals {
            let status = act.run(api, who.name).await;
            let allowed = !act.scope_refuses(who) && (mode != "on" || act.role_allows(who));
            let ok = if allowed {
                (200..300).contains(&status)
            } else {
                status == 403
            };
            if !ok {
                failures.push(format!(
                    "{mode}: {} {act:?} -> {status}, expected {}",
                    who.name,
                    if allowed { "2xx" } else { "403" }
                ));
            }
            if let Some(changed) = act.changed(&admin, who.name).await {
                if changed != allowed {
                    failures.push(format!(
                        "{mode}: {} {act:?}: state changed = {changed}, expected {allowed}",
                        who.name
                    ));
                }
            }
        }
    }
    // Every would-be denial is in the log in `log` mode (and only there), naming the
    // principal, the action and the app.
    let log = origin.log_text();
    for act in ACTIONS {
        for (who, _, label) in &principals {
            if act.scope_refuses(who) || act.role_allows(who) {
                continue;
            }
            let logged = log.lines().any(|l| {
                l.contains("authz would deny")
                    && l.contains(label.as_str())
                    && l.contains(&format!("action={}", act.logged_as()))
                    && l.contains(if act.needs().1 {
                        " app=* "
                    } else {
                        " app=shop "
                    })
                    && l.contains("rule=")
            });
            if logged != (mode == "log") {
                failures.push(format!(
                    "{mode}: {} {act:?}: would-be denial logged = {logged}",
                    who.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_refuses_what_a_role_may_not_do_and_changes_nothing() {
    matrix("on").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_allows_and_logs_every_would_be_denial() {
    matrix("log").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn off_keeps_todays_behaviour() {
    matrix("off").await;
}

/// Users sign in, their roles change at once, a new password ends their sessions, deleting
/// them ends their sessions, and nobody hands out more than they hold.
#[tokio::test(flavor = "multi_thread")]
async fn users_live_in_the_state_and_never_grant_more_than_they_hold() {
    let origin = Origin::start().await;
    let admin = origin.admin().await;
    admin.create_app("shop").await.unwrap();
    let base = origin.url("");
    let r = admin
        .post(
            "/users",
            json!({"username": "ann", "password": "short", "roles": []}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "a short password: {r:?}");
    let r = admin
        .post(
            "/users",
            json!({"username": "ann", "password": "ann-password-1", "roles": [{"app": "nope", "role": "owner"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404, "a role in an unknown app: {r:?}");
    let r = admin
        .post(
            "/users",
            json!({"username": "ann", "password": "ann-password-1", "roles": [{"app": "shop", "role": "owner"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let ann = Api::login(&base, "ann", "ann-password-1").await.unwrap();
    assert_eq!(ann.get("/apps/shop").await.unwrap().status, 200);
    let apps = ann.get("/apps").await.unwrap();
    assert_eq!(
        apps.body["data"].as_array().unwrap().len(),
        1,
        "only her app: {apps:?}"
    );

    // An app owner manages her app's users, never a role in every app or above her own.
    let r = ann
        .post(
            "/users",
            json!({"username": "bob", "password": "bob-password-1", "roles": [{"app": "*", "role": "viewer"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "a * role from an app owner: {r:?}");
    let r = ann
        .post(
            "/users",
            json!({"username": "bob", "password": "bob-password-1", "roles": [{"app": "shop", "role": "operator"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let bob = Api::login(&base, "bob", "bob-password-1").await.unwrap();
    let r = bob
        .post("/apps/shop/ingress", json!({"type": "rtmp", "room": "cam"}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "an operator makes ingresses: {r:?}");
    let r = bob
        .post(
            "/api-keys",
            json!({"name": "mine", "app": "shop", "role": "viewer"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "an operator makes no keys: {r:?}");

    // A role change applies to the next request; no new login needed.
    let r = ann
        .patch(
            "/users/bob",
            json!({"roles": [{"app": "shop", "role": "viewer"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob
        .post(
            "/apps/shop/ingress",
            json!({"type": "rtmp", "room": "cam2"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "demoted at once: {r:?}");

    // A new password ends bob's sessions; deleting ann ends hers.
    let r = admin
        .patch("/users/bob", json!({"password": "bob-password-2"}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(bob.get("/apps/shop").await.unwrap().status, 401);
    assert!(Api::login(&base, "bob", "bob-password-2").await.is_ok());
    assert_eq!(admin.delete("/users/ann").await.unwrap().status, 204);
    assert_eq!(ann.get("/apps/shop").await.unwrap().status, 401);
    assert!(Api::login(&base, "ann", "ann-password-1").await.is_err());

    // The list never shows a password hash; the audit log names the users.
    let r = admin.get("/users").await.unwrap();
    assert!(!r.body.to_string().contains("argon2"), "{r:?}");
    assert!(origin.log_text().contains("user:bob"), "audit names users");
}
