// WHIP publish and WHEP playback in headless Chromium, with a fake camera and microphone.
//   node webrtc.mjs [--whip URL --token T] [--whep URL] [--seconds N] [--page URL] [--clock]
//                   [--insecure]
// Publishes to --whip (if given), then plays --whep (if given) for --seconds, and prints one
// JSON line: {"publish": {...}, "play": {framesDecoded, audioPackets, firstFrameMs, ...}}.
// --page is an http URL on the node the pages are opened on (getUserMedia needs a secure
// context; http://127.0.0.1 is one).
// --clock: the published video is a canvas showing the sender's wall clock as 32 black/white
// blocks; the viewer reads the clock back from every frame it presents and reports the
// glass-to-glass latency (same browser, same clock): {latencyMs: {p50, p95, max, n}}.
// --insecure: accept the node's HTTPS certificate whoever signed it (a test CA).
import { chromium } from 'playwright-core';

const arg = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const whip = arg('whip');
const token = arg('token');
const whep = arg('whep');
const seconds = Number(arg('seconds') || '8');
const clock = process.argv.includes('--clock');
const pageUrl = arg('page') || (whip || whep).replace(/\/(whip|whep)\/.*/, '/healthz');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    ...(process.argv.includes('--insecure') ? ['--ignore-certificate-errors'] : [])],
});
const out = {};
try {
  if (whip) {
    const pub = await browser.newPage();
    pub.on('console', (m) => process.stderr.write(`[publish] ${m.text()}\n`));
    await pub.goto(pageUrl);
    out.publish = await pub.evaluate(async ({ whip, token, clock }) => {
      let stream;
      if (clock) {
        // 8 x 4 blocks of 80 x 90 px: bit i of (Date.now() mod 2^32) is block i, white for 1.
        const canvas = document.createElement('canvas');
        canvas.width = 640; canvas.height = 360;
        const g = canvas.getContext('2d');
        const draw = () => {
          const t = Date.now() >>> 0;
          for (let i = 0; i < 32; i++) {
            g.fillStyle = (t >>> i) & 1 ? '#fff' : '#000';
            g.fillRect((i % 8) * 80, Math.floor(i / 8) * 90, 80, 90);
          }
        };
        draw();
        setInterval(draw, 5);
        const audio = await navigator.mediaDevices.getUserMedia({ audio: true });
        stream = new MediaStream([...canvas.captureStream(30).getVideoTracks(), ...audio.getAudioTracks()]);
      } else {
        stream = await navigator.mediaDevices.getUserMedia({
          video: { width: 640, height: 360, frameRate: 30 }, audio: true,
        });
      }
      const pc = new RTCPeerConnection();
      window.pc = pc;
      for (const track of stream.getTracks()) {
        const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
        if (track.kind === 'video') {
          const h264 = RTCRtpSender.getCapabilities('video').codecs
            .filter((c) => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine || ''));
          t.setCodecPreferences(h264);
        }
      }
      await pc.setLocalDescription(await pc.createOffer());
      const resp = await fetch(whip, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
        body: pc.localDescription.sdp,
      });
      const text = await resp.text();
      if (resp.status !== 201) return { status: resp.status, error: text };
      await pc.setRemoteDescription({ type: 'answer', sdp: text });
      const t0 = performance.now();
      while (pc.connectionState !== 'connected' && performance.now() - t0 < 10000) {
        await new Promise((r) => setTimeout(r, 20));
      }
      return {
        status: resp.status,
        location: resp.headers.get('Location'),
        state: pc.connectionState,
        connectMs: Math.round(performance.now() - t0),
      };
    }, { whip, token, clock });
    if (out.publish.status !== 201 || out.publish.state !== 'connected') {
      throw new Error(`publish failed: ${JSON.stringify(out.publish)}`);
    }
    // Let the room fill its first group before a viewer comes.
    await new Promise((r) => setTimeout(r, 2500));
  }
  if (whep) {
    const play = await browser.newPage();
    play.on('console', (m) => process.stderr.write(`[play] ${m.text()}\n`));
    await play.goto(pageUrl);
    out.play = await play.evaluate(async ({ whep, seconds, clock }) => {
      const pc = new RTCPeerConnection();
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      document.body.appendChild(video);
      pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
      await pc.setLocalDescription(await pc.createOffer());
      const resp = await fetch(whep, {
        method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
      });
      const text = await resp.text();
      if (resp.status !== 201) return { status: resp.status, error: text };
      await pc.setRemoteDescription({ type: 'answer', sdp: text });
      const answeredAt = performance.now();
      const stats = async () => {
        let framesDecoded = 0, audioPackets = 0, videoPackets = 0, codec = '', width = 0;
        let audioCodec = '', audioEnergy = 0, audioSamples = 0, audioConcealed = 0;
        const report = await pc.getStats();
        const codecs = {};
        report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s.mimeType; });
        report.forEach((s) => {
          if (s.type !== 'inbound-rtp') return;
          if (s.kind === 'video') {
            framesDecoded = s.framesDecoded || 0; videoPackets = s.packetsReceived || 0;
            codec = codecs[s.codecId] || ''; width = s.frameWidth || 0;
          }
          if (s.kind === 'audio') {
            audioPackets = s.packetsReceived || 0; audioCodec = codecs[s.codecId] || '';
            audioEnergy = s.totalAudioEnergy || 0; audioSamples = s.totalSamplesReceived || 0;
            audioConcealed = s.concealedSamples || 0;
          }
        });
        return {
          framesDecoded, audioPackets, videoPackets, codec, width,
          audioCodec, audioEnergy, audioSamples, audioConcealed,
        };
      };
      const latencies = [];
      if (clock) {
        const canvas = document.createElement('canvas');
        canvas.width = 640; canvas.height = 360;
        const g = canvas.getContext('2d', { willReadFrequently: true });
        const onFrame = () => {
          const now = Date.now() >>> 0;
          if (video.videoWidth === 640) {
            g.drawImage(video, 0, 0, 640, 360);
            let t = 0;
            for (let i = 0; i < 32; i++) {
              const px = g.getImageData((i % 8) * 80 + 40, Math.floor(i / 8) * 90 + 45, 1, 1).data;
              if (px[0] + px[1] + px[2] > 384) t |= (1 << i);
            }
            const d = (now - (t >>> 0)) >>> 0;
            if (d < 10000) latencies.push(d);
          }
          video.requestVideoFrameCallback(onFrame);
        };
        video.requestVideoFrameCallback(onFrame);
      }
      let firstFrameMs = null;
      while (performance.now() - answeredAt < seconds * 1000) {
        const s = await stats();
        if (firstFrameMs === null && s.framesDecoded > 0) {
          firstFrameMs = Math.round(performance.now() - answeredAt);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      // "Still playing" is measured over a window long enough for a starved machine.
      const first = await stats();
      await new Promise((r) => setTimeout(r, 3000));
      const last = await stats();
      const location = resp.headers.get('Location');
      const del = await fetch(new URL(location, whep), { method: 'DELETE' });
      latencies.sort((a, b) => a - b);
      const q = (f) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(f * latencies.length))] : null;
      const latencyMs = { p50: q(0.5), p95: q(0.95), max: latencies.length ? latencies[latencies.length - 1] : null, n: latencies.length };
      return {
        latencyMs,
        status: resp.status, location, deleteStatus: del.status, state: pc.connectionState,
        firstFrameMs, ...last, framesDecodedInWindow: last.framesDecoded - first.framesDecoded,
        audioPacketsInWindow: last.audioPackets - first.audioPackets, windowMs: 3000,
      };
    }, { whep, seconds, clock });
  }
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
