// Opens a player page of a room in backstage in headless Chromium and follows it, printing one
// JSON line per step (the test drives the steps through stdin):
//   node wait_then_play.mjs <player url>
//   1. once the page says it waits (window.player.mode === 'waiting', or after 60 s):
//        {"event": "waiting", "mode", "state", "currentTime", "finalUrl", "status"}
//   2. for each "state" line read from stdin, what the page does now:
//        {"event": "state", "mode", "state", "currentTime", "framesDecoded", "sameDocument"}
//   3. on a "play" line: waits (up to 120 s) until the page plays by itself, without being
//      reloaded: a picture of known size on the video element, and WHEP frames decoded (25, a
//      second at 25 fps) or the HLS video's clock past 1 s:
//        {"event": "playing", "mode", "currentTime", "framesDecoded", "videoWidth",
//         "sameDocument", "waitedFor"} (or {"event": "playing", "error", ...} on timeout)
//      then exits.
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});

// What the page does now; `sameDocument` is false if the page was reloaded or navigated since
// the marker was set.
async function snapshot(page) {
  return page.evaluate(async () => {
    const v = document.getElementById('video');
    const p = window.player || {};
    let framesDecoded = null;
    if (p.pc) {
      (await p.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded = s.framesDecoded;
      });
    }
    return {
      mode: p.mode, error: p.error, whepError: p.whepError,
      state: document.getElementById('state')?.textContent,
      currentTime: v ? v.currentTime : null, videoWidth: v ? v.videoWidth : null,
      framesDecoded, sameDocument: window.__followed === true, finalUrl: location.href,
    };
  });
}

const print = (o) => console.log(JSON.stringify(o));

try {
  const page = await browser.newPage();
  page.on('console', (m) => process.stderr.write(`[player] ${m.text()}\n`));
  const resp = await page.goto(url);
  await page.waitForFunction(() => window.player && window.player.mode === 'waiting', null,
    { timeout: 60000 }).catch(() => {});
  await page.evaluate(() => { window.__followed = true; });
  print({ event: 'waiting', status: resp ? resp.status() : null, ...(await snapshot(page)) });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = line.trim();
    if (cmd === 'state') {
      print({ event: 'state', ...(await snapshot(page)) });
    } else if (cmd === 'play') {
      const start = Date.now();
      let r;
      for (const until = start + 120000; ;) {
        r = await snapshot(page);
        // A picture on screen, not only frames in the decoder: the video element learns its
        // size a moment after the first decoded frames.
        const whep = r.mode === 'whep' && r.framesDecoded >= 25 && r.videoWidth > 0;
        const hls = r.mode === 'hls' && r.currentTime > 1 && r.videoWidth > 0;
        if (whep || hls) break;
        if (Date.now() > until) { r.error = r.error || 'not playing within 120 s'; break; }
        await new Promise((res) => setTimeout(res, 250));
      }
      print({ event: 'playing', waitedFor: (Date.now() - start) / 1000, ...r });
      break;
    }
  }
  lines.close();
} finally {
  await browser.close();
}
