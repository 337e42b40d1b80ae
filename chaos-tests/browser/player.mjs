// Opens the node's player page for each URL given (keeping earlier pages open) in headless
// Chromium and prints, per page, what the player chose and whether the video plays, as JSON:
//   node player.mjs <player url>... -> [{"mode": "whep"|"hls", "whepError", "currentTime", "framesDecoded"}]
import { chromium } from 'playwright-core';

const urls = process.argv.slice(2);
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
    page.on('console', (m) => process.stderr.write(`[player] ${m.text()}\n`));
    await page.goto(url);
    // Playing: the video's clock has moved on by more than a second.
    await page.waitForFunction(() => {
      const v = document.getElementById('video');
      return window.player && window.player.mode !== 'starting' && v.currentTime > 1;
    }, null, { timeout: 30000 }).catch(() => {});
    const r = await page.evaluate(async () => {
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
    results.push(r);
  }
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
