// Opens the node's player page for each URL given (keeping earlier pages open) in headless
// Chromium and prints, per page, what the player chose and whether the video plays, as JSON:
//   node player.mjs <player url>... -> [{"mode": "whep"|"hls", "whepError", "currentTime", "framesDecoded"}]
import { chromium } from 'playwright-core';

// --reconnect: after the first line, keep the pages open until the first page's WHEP player has
// reconnected (the test restarts the publisher) and decodes again, then print a second line:
//   {"reconnects", "framesDecoded", "state"} (or {"error"} after 90 s).
const reconnect = process.argv.includes('--reconnect');
const urls = process.argv.slice(2).filter((a) => a !== '--reconnect');
const pages = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});
const results = [];
try {
  for (const url of urls) {
    const page = await browser.newPage();
    pages.push(page);
    page.on('console', (m) => process.stderr.write(`[player] ${m.text()}\n`));
    await page.goto(url);
    // Playing: the video's clock has moved on by more than a second.
    await page.waitForFunction(() => {
      const v = document.getElementById('video');
      return window.player && window.player.mode !== 'starting' && v.currentTime > 1;
    }, null, { timeout: 30000 }).catch(() => {});
    // A WHEP player decodes on: read its stats until 25 frames are decoded (a second of video
    // at 25 fps; a starved machine may need a while) and the video shows a picture of known
    // size, or 30 s have passed.
    let r;
    for (const until = Date.now() + 30000; ;) {
      r = await page.evaluate(async () => {
        const v = document.getElementById('video');
        let framesDecoded = null;
        if (window.player.pc) {
          (await window.player.pc.getStats()).forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded = s.framesDecoded;
          });
        }
        return {
          mode: window.player.mode, whepError: window.player.whepError, error: window.player.error,
          state: document.getElementById('state').textContent, currentTime: v.currentTime,
          videoWidth: v.videoWidth, framesDecoded, finalUrl: location.href,
        };
      });
      // Decoded frames reach the video element a moment later: wait for its size as well.
      const decoded = r.framesDecoded === null || r.framesDecoded >= 25;
      if ((decoded && r.videoWidth > 0) || Date.now() > until) break;
      await new Promise((res) => setTimeout(res, 250));
    }
    results.push(r);
  }
  console.log(JSON.stringify(results));
  if (reconnect) {
    const page = pages[0];
    let again = { error: 'no reconnect within 90 s' };
    for (const until = Date.now() + 90000; Date.now() < until;) {
      const r = await page.evaluate(async () => {
        const p = window.player;
        if (!p.pc || p.reconnects < 1 || p.pc.connectionState !== 'connected') return null;
        let framesDecoded = 0;
        (await p.pc.getStats()).forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded = s.framesDecoded;
        });
        const state = document.getElementById('state').textContent;
        return framesDecoded >= 25 ? { reconnects: p.reconnects, framesDecoded, state } : null;
      });
      if (r) { again = r; break; }
      await new Promise((res) => setTimeout(res, 500));
    }
    console.log(JSON.stringify(again));
  }
} finally {
  await browser.close();
}
