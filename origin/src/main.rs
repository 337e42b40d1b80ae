//! `streamhub-origin`: a complete single node with no flags; see `--help`.

use streamhub_origin::config::OriginArgs;

/// mimalloc: the media paths (WebRTC in particular) allocate small buffers per packet, where
/// glibc's allocator showed up as a third of the CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = OriginArgs::load()?;
    let shutdown = streamhub_media::node::init(&settings.node.log);
    streamhub_origin::node::run(settings, shutdown).await
}
