//! First-start setup: the admin account, and a `demo` app with an RTMP ingress so a new node can
//! be pushed to and watched right away. Secrets are printed once and stored only as hashes.

use streamhub_cluster::state::{AdminUser, Command, Ingress, IngressKind};
use streamhub_shared::{AppName, RoomName};

use crate::credentials::{hash_password, random_hex, random_token, sha256_hex, unix_now_ms};
use crate::services::PublicUrls;
use crate::tenants::Tenants;

/// What the first start created, for the banner.
#[derive(Debug, Default)]
pub struct FirstStart {
    /// The generated admin password, if ADMIN_PASS was not given.
    pub admin_password: Option<String>,
    /// The demo ingress's stream key.
    pub demo_stream_key: Option<String>,
}

/// Name of the app created on first start.
pub const DEMO_APP: &str = "demo";
/// Room of the demo ingress.
pub const DEMO_ROOM: &str = "main";

/// Creates the admin (from `ADMIN_USER`/`ADMIN_PASS`, or a generated password) and the demo app,
/// once. Later starts change nothing.
pub async fn first_start(
    tenants: &Tenants,
    admin_user: &str,
    admin_pass: Option<&str>,
) -> anyhow::Result<FirstStart> {
    let mut out = FirstStart::default();
    if tenants.admin().is_some() {
        return Ok(out);
    }
    let password = match admin_pass {
        Some(p) => p.to_string(),
        None => {
            let p = random_token("", 20);
            out.admin_password = Some(p.clone());
            p
        }
    };
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&password)).await?;
    tenants
        .write(Command::BootstrapAdmin(AdminUser {
            username: admin_user.to_string(),
            password_hash,
            sessions_after_ms: 0,
        }))
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap admin: {e}"))?;
    let app = AppName::new(DEMO_APP)?;
    if tenants.read(|s| s.tenants.apps.is_empty()) {
        let key = random_token("rk_", 32);
        let demo = tenants
            .new_app(app.clone(), Some("Demo".into()))
            .map_err(|e| anyhow::anyhow!("bootstrap demo app: {e}"))?;
        tenants
            .write(Command::CreateApp(demo))
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap demo app: {e}"))?;
        tenants
            .write(Command::CreateIngress(Ingress {
                id: format!("in_{}", random_hex(8)),
                app,
                room: RoomName::new(DEMO_ROOM)?,
                name: Some("demo".into()),
                kind: IngressKind::Rtmp,
                key_hash: sha256_hex(&key),
                url: None,
                transport: None,
                passphrase: None,
                created_at_ms: unix_now_ms(),
            }))
            .await
            .map_err(|e| anyhow::anyhow!("bootstrap demo ingress: {e}"))?;
        out.demo_stream_key = Some(key);
    }
    Ok(out)
}

/// The start-up banner: where the API is, how to push, where to watch, how to grow the cluster.
pub fn banner(
    urls: &PublicUrls,
    webrtc_udp: std::net::SocketAddr,
    first: &FirstStart,
    admin_user: &str,
) -> String {
    let base = urls.base();
    let rtmp = urls.rtmp();
    let key = first
        .demo_stream_key
        .clone()
        .unwrap_or_else(|| "<streamKey>".into());
    let mut s = format!(
        "\nstreamhub origin {name} (region {region}) is ready\n\
         \n  dashboard      {base}/   (samples: {base}/samples/<app>, SDK: {base}/sdk/streamhub.mjs)\
         \n  API            {base}/api/v1   (health: {base}/healthz, metrics: {base}/metrics)\n",
        name = urls.node(),
        region = urls.region(),
    );
    match &first.admin_password {
        Some(p) => {
            s += &format!(
                "  admin login    {admin_user} / {p}   (shown once; only its hash is stored)\n"
            )
        }
        None => {
            s += &format!(
                "  admin login    {admin_user} (password from ADMIN_PASS or the first start)\n"
            )
        }
    }
    s += &format!(
        "\n  push (RTMP)    {rtmp}/{key}\n  \
         e.g.           ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine -c:v libx264 -preset veryfast -pix_fmt yuv420p -g 60 -c:a aac -f flv {rtmp}/{key}\n  \
         watch (HLS)    {base}/hls/{DEMO_APP}/{DEMO_ROOM}/index.m3u8   (ffplay or any HLS player)\n  \
         push (WHIP)    {base}/whip/{DEMO_APP}/{DEMO_ROOM}   (Bearer: the stream key; test page: {base}/publish/{DEMO_APP}/{DEMO_ROOM}; media on udp {udp})\n  \
         watch (WHEP)   {base}/whep/{DEMO_APP}/{DEMO_ROOM}   (player page: {base}/play/{DEMO_APP}/{DEMO_ROOM})\n",
        udp = webrtc_udp,
    );
    s += &format!(
        "\n  cluster        add a node: mint a single-use join token for its role (shown once, never logged):\n                 \
         curl -X POST {base}/api/v1/cluster/join-tokens -H 'authorization: Bearer <admin session>' -H 'content-type: application/json' -d '{{\"role\":\"edge\"}}'\n                 \
         then start it with --join {base} and the token in STREAMHUB_JOIN_TOKEN or --join-token-file\n"
    );
    if first.demo_stream_key.is_none() {
        s += "  (stream keys are shown once; create one: POST /api/v1/apps/:app/ingress {\"type\":\"rtmp\",\"room\":\"main\"})\n";
    }
    s
}
