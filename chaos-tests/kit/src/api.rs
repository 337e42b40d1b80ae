//! A small client of the REST API (`/api/v1`) of one node.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

/// Default time limit of one request: a request to a stopped node must not hang a test, and a
/// write must get the server's own answer (its Raft write times out after 5 s) rather than the
/// client's.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// One HTTP answer: status and JSON body (a JSON string if the body was not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

impl Reply {
    /// The `data` member of a success envelope.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// The `error.code` of a failure envelope, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// API client for one node, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
}

impl Api {
    /// An unauthenticated client of the node at `base` (e.g. `http://127.0.0.1:3020`).
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            client: reqwest::Client::new(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// An unauthenticated client of `base` over `client` (e.g. one trusting a test CA).
    pub fn with_client(base: &str, client: reqwest::Client) -> Api {
        Api {
            client,
            ..Api::new(base)
        }
    }

    /// Logs in with `POST /auth/login` and returns a client carrying the session JWT.
    pub async fn login(base: &str, user: &str, pass: &str) -> anyhow::Result<Api> {
        Api::new(base).sign_in(user, pass).await
    }

    /// Logs this client in (as [`Api::login`]).
    pub async fn sign_in(self, user: &str, pass: &str) -> anyhow::Result<Api> {
        let base = self.base.clone();
        let api = self;
        let r = api
            .post("/auth/login", json!({"username": user, "password": pass}))
            .await?;
        anyhow::ensure!(r.status == 200, "login on {base}: {r:?}");
        let token = r.data()["token"]
            .as_str()
            .with_context(|| format!("login on {base}: no token in {r:?}"))?;
        Ok(Api {
            token: Some(token.to_string()),
            ..api
        })
    }

    /// The same client with another per-request time limit.
    pub fn with_timeout(&self, timeout: Duration) -> Api {
        Api {
            timeout,
            ..self.clone()
        }
    }

    /// The bearer token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Base URL of the node.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client with another bearer token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// A request to `/api/v1<path>` with the client's token and time limit, to finish and send
    /// by hand ([`Api::send`]).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base))
            .timeout(self.timeout);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request made with [`Api::request`].
    pub async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Reply { status, body })
    }

    /// `GET /api/v1<path>`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `POST /api/v1<path>` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }

    /// `PATCH /api/v1<path>` with a JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(self.request(reqwest::Method::PATCH, path).json(&body))
            .await
    }

    /// `POST /api/v1<path>` with a raw body of `content_type`.
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> anyhow::Result<Reply> {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body);
        self.send(r).await
    }

    /// `DELETE /api/v1<path>`.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.send(self.request(reqwest::Method::PUT, path).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// `POST /apps {name}`.
    pub async fn create_app(&self, name: &str) -> anyhow::Result<Reply> {
        self.post("/apps", json!({ "name": name })).await
    }

    /// Names of all apps (`GET /apps`, which must answer 200).
    pub async fn app_names(&self) -> anyhow::Result<BTreeSet<String>> {
        let r = self.get("/apps").await?;
        anyhow::ensure!(r.status == 200, "GET /apps on {}: {r:?}", self.base);
        let apps = r
            .data()
            .as_array()
            .context("GET /apps: data is not an array")?;
        Ok(apps
            .iter()
            .filter_map(|a| a["name"].as_str().map(String::from))
            .collect())
    }

    /// `GET /cluster` (must answer 200): `{self, leader, term, voters, learners, nodes}`.
    pub async fn cluster(&self) -> anyhow::Result<Value> {
        let r = self.get("/cluster").await?;
        anyhow::ensure!(r.status == 200, "GET /cluster on {}: {r:?}", self.base);
        Ok(r.data().clone())
    }

    /// Mints a single-use join token for a node of `role` (`origin` or `edge`) (`POST
    /// /cluster/join-tokens`).
    pub async fn join_token(&self, role: &str) -> anyhow::Result<String> {
        let r = self
            .post("/cluster/join-tokens", json!({"role": role, "ttl": "1h"}))
            .await?;
        anyhow::ensure!(r.status == 201, "mint join token on {}: {r:?}", self.base);
        Ok(r.data()["token"]
            .as_str()
            .context("join token answer without token")?
            .to_string())
    }

    /// Creates `app` (201, or 409 if it exists) and an RTMP ingress for `room`; returns its
    /// stream key.
    pub async fn rtmp_ingress(&self, app: &str, room: &str) -> anyhow::Result<String> {
        let r = self.create_app(app).await?;
        anyhow::ensure!(matches!(r.status, 201 | 409), "create app {app}: {r:?}");
        let r = self
            .post(
                &format!("/apps/{app}/ingress"),
                json!({"type": "rtmp", "room": room}),
            )
            .await?;
        anyhow::ensure!(r.status == 201, "create ingress {app}/{room}: {r:?}");
        Ok(r.data()["streamKey"]
            .as_str()
            .context("ingress answer without streamKey")?
            .to_string())
    }
}

/// Names listed under `key` (e.g. `voters`) of a `GET /cluster` answer.
pub fn names(status: &Value, key: &str) -> BTreeSet<String> {
    status[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
