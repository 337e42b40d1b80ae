// Plays a room on the player pages given (one browser tab each, kept open) in headless Chromium
// and samples every tab twice a second while the test restarts the encoder or kills a node:
//   node restart.mjs <player url>...
// Prints {"ready": [...]} once every tab decodes, then reads commands on stdin:
// - `mark <label>`: the test is about to change something; each tab's longest gap between
//   presented video frames is counted from here;
// - `reroute <from> <to>`: every request of every tab whose URL starts with <from> goes to <to>
//   instead, as a load balancer or DNS would send them once a node died; answered with
//   {"rerouted": <to>} once in place;
// - `stop`: print every sample as one JSON line, exit.
// A sample: {t, mark, pages: [{mode, frames, audio, width, error, reconnects, lostNode, drained, node,
// reloaded, gapMs}]}, where `t` is Date.now(), `gapMs` is the longest gap between two presented
// video frames since the last mark (the gap still open included), and `frames` and `audio` only
// grow: video frames decoded and audio decoded (WebRTC samples from received packets, or bytes
// decoded by the media element for HLS), summed over every peer connection the page made.
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const urls = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});

// Runs in the page: the page's counters, kept across its peer connections. The player page
// (`/play`) and the SDK's (`/embed`) both expose `window.player`.
const probe = async () => {
  const p = window.player;
  const v = document.getElementById('video') || document.querySelector('video');
  const mode = p.mode || p.protocol;
  const acc = window.__acc || (window.__acc = { pc: null, baseFrames: 0, baseAudio: 0, frames: 0, audio: 0 });
  let frames = 0;
  let audio = 0;
  if (mode === 'whep') {
    if (p.pc && p.pc !== acc.pc) {
      acc.baseFrames += acc.frames;
      acc.baseAudio += acc.audio;
      acc.frames = 0;
      acc.audio = 0;
      acc.pc = p.pc;
    }
    if (p.pc) {
      (await p.pc.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        if (s.kind === 'video') acc.frames = s.framesDecoded || 0;
        // Samples played from packets received (not the ones concealing missing packets).
        if (s.kind === 'audio') acc.audio = (s.totalSamplesReceived || 0) - (s.concealedSamples || 0);
      });
    }
    frames = acc.baseFrames + acc.frames;
    audio = acc.baseAudio + acc.audio;
  } else {
    // The element's counters start again when a player attaches a new source (it moved to
    // another node): keep what was counted before.
    const f = v.getVideoPlaybackQuality().totalVideoFrames;
    const a = v.webkitAudioDecodedByteCount || 0;
    if (f < (acc.hlsFrames || 0)) acc.hlsBaseFrames = (acc.hlsBaseFrames || 0) + acc.hlsFrames;
    if (a < (acc.hlsAudio || 0)) acc.hlsBaseAudio = (acc.hlsBaseAudio || 0) + acc.hlsAudio;
    acc.hlsFrames = f;
    acc.hlsAudio = a;
    frames = (acc.hlsBaseFrames || 0) + f;
    audio = (acc.hlsBaseAudio || 0) + a;
  }
  const ranges = [];
  for (let i = 0; i < v.buffered.length; i += 1) {
    ranges.push(`${v.buffered.start(i).toFixed(2)}-${v.buffered.end(i).toFixed(2)}`);
  }
  const f = window.__presented;
  const gapMs = f && f.last !== null ? Math.round(Math.max(f.maxGap, performance.now() - f.last)) : null;
  return {
    gapMs,
    mode, frames, audio, width: v.videoWidth,
    error: p.error || (p.state === 'error' ? p.reason : null) || (v.error && v.error.message) || null,
    time: v.currentTime.toFixed(2), buffered: ranges.join(' '),
    reconnects: p.reconnects, lostNode: p.lostNode, drained: p.drained, node: p.nodeName || p.node,
    state: (document.getElementById('state') || document.getElementById('badge')).textContent,
  };
};

const pages = [];
const samples = [];
let mark = 'start';
let timer = null;
try {
  for (const url of urls) {
    const page = await browser.newPage();
    page.on('console', (m) => process.stderr.write(`[restart ${pages.length}] ${m.text()}\n`));
    await page.goto(url);
    // A marker that a reload would lose.
    await page.evaluate(() => { window.__sameDocument = true; });
    pages.push(page);
  }
  // Every tab decodes: 25 frames and some audio.
  const ready = [];
  for (const page of pages) {
    let r = null;
    for (const until = Date.now() + 60000; Date.now() < until;) {
      r = await page.evaluate(probe);
      if (r.frames >= 25 && r.audio > 0 && r.width > 0) break;
      await new Promise((res) => setTimeout(res, 250));
    }
    ready.push(r);
    // Every presented video frame's time, for the longest gap between two.
    await page.evaluate(() => {
      const v = document.getElementById('video') || document.querySelector('video');
      const f = window.__presented = { last: null, maxGap: 0 };
      const tick = (now) => {
        if (f.last !== null) f.maxGap = Math.max(f.maxGap, now - f.last);
        f.last = now;
        v.requestVideoFrameCallback(tick);
      };
      v.requestVideoFrameCallback(tick);
    });
    // What hls.js goes through, for a failure's message (the test prints the tab's console).
    await page.evaluate(() => {
      const h = window.player.hls;
      if (!h) return;
      h.on(Hls.Events.ERROR, (_, d) => console.log(`hls.js error ${d.details} fatal=${d.fatal}`));
      h.on(Hls.Events.FRAG_CHANGED, (_, d) => console.log(`hls.js playing ${d.frag.sn} cc=${d.frag.cc} at ${d.frag.start.toFixed(2)}`));
    });
  }
  console.log(JSON.stringify({ ready }));
  const sample = async () => {
    const row = { t: Date.now(), mark, pages: [] };
    for (const page of pages) {
      const r = await page.evaluate(probe).catch((e) => ({ error: `evaluate: ${e.message}` }));
      r.reloaded = !(await page.evaluate(() => window.__sameDocument === true).catch(() => false));
      row.pages.push(r);
    }
    samples.push(row);
  };
  timer = setInterval(sample, 500);
  const input = readline.createInterface({ input: process.stdin });
  for await (const line of input) {
    if (line.startsWith('mark ')) {
      mark = line.slice(5);
      for (const page of pages) {
        await page.evaluate(() => { if (window.__presented) window.__presented.maxGap = 0; }).catch(() => {});
      }
    }
    if (line.startsWith('reroute ')) {
      const [, from, to] = line.split(' ');
      for (const page of pages) {
        // Replaces any earlier reroute (requests keep their original URL in the page).
        await page.unrouteAll({ behavior: 'ignoreErrors' });
        await page.route((u) => u.href.startsWith(`${from}/`),
          (route) => route.continue({ url: to + route.request().url().slice(from.length) }));
      }
      console.log(JSON.stringify({ rerouted: to }));
    }
    if (line === 'stop') break;
  }
  clearInterval(timer);
  await sample();
  console.log(JSON.stringify(samples));
} finally {
  if (timer) clearInterval(timer);
  // A page still answering a probe can keep close() waiting: do not let it hold the test.
  await Promise.race([browser.close(), new Promise((res) => setTimeout(res, 5000))]);
}
process.exit(0);
