//! `streamhub-edge`: pulls rooms from origins over QUIC and serves them near the viewers; see
//! `--help`.

use streamhub_edge::config::EdgeArgs;

/// mimalloc: the media paths (WebRTC in particular) allocate small buffers per packet, where
/// glibc's allocator showed up as a third of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = EdgeArgs::load()?;
    let (shutdown, terminate) = streamhub_media::node::init_draining(&settings.node.log);
    streamhub_edge::node::run(settings, shutdown, terminate).await
}
