// The web surface as a new user meets it, in headless Chromium:
//   node dashboard.mjs <origin url> <edge url> <user> <password> <screenshot dir>
// Signs in to the dashboard, creates an app and an RTMP ingress, copies the key from the page,
// publishes with ffmpeg, waits for the room's live preview to decode, follows the token API's
// playUrl and embedUrl, plays the embed inside an iframe of another site, plays a camera room
// (WebSocket JPEG, as an ESP32 sends) as MJPEG on /play and /embed, publishes from the sample
// page with the fake camera and plays it with the sample viewer on the edge, opens the edge's
// `/`, and screenshots every dashboard page at 1280 and 360 px. Prints one JSON line:
//   {steps: {...}, consoleErrors: [...], failedRequests: [...], screenshots: [...]}
// or {error, steps, ...} when a step fails.
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createServer } from 'node:http';

const [origin, edge, user, pass, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const steps = {};
const consoleErrors = [];
const failedRequests = [];
const screenshots = [];
const children = [];
const log = (m) => process.stderr.write(`[dashboard] ${m}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
await context.grantPermissions(['camera', 'microphone']);

// Every page of the run reports its console errors and failed requests (a request aborted by
// navigating away or closing the page is not a failure).
function watch(page, name) {
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(`${name}: ${m.text()} (${m.location().url || ''})`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: uncaught ${e.message}`));
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : '?';
    if (why !== 'net::ERR_ABORTED') failedRequests.push(`${name}: ${r.method()} ${r.url()} ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) failedRequests.push(`${name}: ${r.request().method()} ${r.url()} ${r.status()}`);
  });
  page.on('frameattached', () => {});
  return page;
}

async function newPage(name) {
  return watch(await context.newPage(), name);
}

async function shoot(page, name) {
  for (const width of [1280, 360]) {
    await page.setViewportSize({ width, height: width === 360 ? 740 : 800 });
    await page.waitForTimeout(300);
    const file = join(shots, `${name}-${width}.png`);
    await page.screenshot({ path: file, fullPage: true });
    screenshots.push(file);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

async function until(what, timeoutMs, fn) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last && last.ok) return last;
    } catch (e) {
      last = { error: e.message };
    }
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs / 1000} s (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

// The SDK player inside `frame` (a page or an iframe) decodes: at least `frames` frames (WHEP or
// HLS) or `pictures` pictures (MJPEG).
async function sdkPlays(frame, expr, want) {
  return until(`SDK player ${expr}`, 60000, async () => {
    const s = await frame.evaluate(async (e) => {
      // eslint-disable-next-line no-eval
      const p = e === 'window.player' ? window.player : document.querySelector(e).player;
      return p ? await p.stats() : null;
    }, expr);
    if (!s) return { ok: false };
    const ok = want === 'mjpeg' ? s.protocol === 'mjpeg' && s.pictures >= 3 : (s.framesDecoded || 0) >= 25;
    return { ok, ...s };
  });
}

function ffmpegPublish(url) {
  const p = spawn('ffmpeg', ['-hide_banner', '-nostdin', '-loglevel', 'error', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=25', '-f', 'lavfi', '-i', 'sine',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-g', '50', '-pix_fmt', 'yuv420p',
    '-c:a', 'aac', '-f', 'flv', url], { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(p);
  return p;
}

async function apiCall(method, path, body, token) {
  const r = await fetch(`${origin}/api/v1${path}`, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
  return j.data;
}

try {
  // 1. Sign in.
  const dash = await newPage('dashboard');
  await dash.goto(`${origin}/`);
  await dash.waitForSelector('input[name=username]');
  await shoot(dash, 'signin');
  await dash.fill('input[name=username]', user);
  await dash.fill('input[name=password]', pass);
  await dash.press('input[name=password]', 'Enter');
  await dash.waitForSelector('#apps-h');
  steps.signedIn = true;

  // 2. An app, through the form.
  await dash.fill('input[name=name]', 'web');
  await dash.fill('input[name=displayName]', 'Web surface');
  await dash.click('button[type=submit]');
  await dash.waitForSelector('a[href="#/apps/web"]');
  steps.appCreated = true;
  await shoot(dash, 'apps');

  // 3. An RTMP ingress; the Server and Stream Key read from the page as a user copies them.
  await dash.click('a[href="#/apps/web"]');
  await dash.click('a[href="#/apps/web/ingress"]');
  await dash.fill('form[aria-label="new ingress"] input[name=room]', 'stage');
  await dash.click('form[aria-label="new ingress"] button[type=submit]');
  await dash.waitForSelector('[data-secret=stream-key]');
  const server = await dash.textContent('[data-secret=server]');
  const key = await dash.textContent('[data-secret=stream-key]');
  steps.ingress = { server, keyPrefix: key.slice(0, 3) };
  await shoot(dash, 'ingress');

  // 4. ffmpeg publishes with that key; the room goes live with a decoding preview.
  ffmpegPublish(`${server}/${key}`);
  await dash.click('a[href="#/apps/web/rooms"]');
  await dash.waitForSelector('[data-live-room=stage]', { timeout: 60000 });
  const preview = await sdkPlays(dash, '[data-room=stage]', 'av');
  steps.preview = preview;
  await shoot(dash, 'rooms');

  // 5. Tokens: the minted playUrl and embedUrl open working pages.
  await dash.click('a[href="#/apps/web/tokens"]');
  await dash.fill('form[aria-label="mint a token"] input[name=room]', 'stage');
  await dash.fill('form[aria-label="mint a token"] input[name=identity]', 'viewer-1');
  await dash.click('form[aria-label="mint a token"] button[type=submit]');
  await dash.waitForSelector('[data-secret=play-url]');
  const playUrl = await dash.textContent('[data-secret=play-url]');
  const embedSnippet = await dash.textContent('[data-secret=embed]');
  const embedUrl = embedSnippet.match(/src="([^"]+)"/)[1];
  await shoot(dash, 'tokens');
  const play = await newPage('playUrl');
  await play.goto(playUrl);
  steps.playUrl = await until('the playUrl page plays', 60000, async () => {
    const r = await play.evaluate(() => ({
      mode: window.player && window.player.mode,
      t: document.getElementById('video').currentTime,
      url: location.href,
    }));
    return { ok: r.t > 1, ...r };
  });
  await play.close();
  const embed = await newPage('embedUrl');
  await embed.goto(embedUrl);
  steps.embedUrl = await sdkPlays(embed, 'window.player', 'av');
  await embed.close();

  // 6. The embed in an iframe of another site.
  // Another site: a page served by a server of its own (another port: another origin).
  const site = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><title>another site</title><link rel="icon" href="data:,"><h1>Our page</h1>${embedSnippet}`);
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  const host = await newPage('embedder');
  await host.goto(`http://127.0.0.1:${site.address().port}/page`);
  const iframe = await until('the iframe loads the player', 30000, async () => {
    const f = host.frames().find((x) => x.url().includes('/embed/web/stage'));
    return { ok: !!f && (await f.evaluate(() => !!window.player).catch(() => false)), f };
  });
  const inIframe = await sdkPlays(iframe.f, 'window.player', 'av');
  steps.iframe = { ...inIframe, f: undefined, url: iframe.f.url() };
  await host.close();
  site.close();

  // 7. A camera room: a device key from the Cameras tab, JPEG pictures over WebSocket.
  await dash.click('a[href="#/apps/web/cameras"]');
  await dash.fill('form[aria-label="new device key"] input[name=room]', 'cam');
  await dash.click('form[aria-label="new device key"] button[type=submit]');
  await dash.waitForSelector('[data-secret=device-key]');
  const deviceKey = await dash.textContent('[data-secret=device-key]');
  const wsUrl = await dash.textContent('[data-secret=ws-url]');
  await shoot(dash, 'cameras');
  const dir = mkdtempSync(join(tmpdir(), 'cam-'));
  const pictures = [0, 1].map((i) => {
    const file = join(dir, `p${i}.jpg`);
    execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-f', 'lavfi', '-i',
      `testsrc=size=320x240:rate=1:duration=1`, '-vf', `hue=h=${i * 90}`, '-frames:v', '1', '-y', file]);
    return readFileSync(file);
  });
  // The device: a WebSocket that sends one JPEG per binary message, 10 per second (a browser
  // page stands in for the ESP32; `&key=` as for libraries that cannot set headers).
  const device = await newPage('camera-device');
  await device.evaluate(async ({ url, pics }) => {
    const bytes = pics.map((b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('camera WebSocket failed')); });
    let n = 0;
    window.camera = setInterval(() => ws.readyState === 1 && ws.send(bytes[n++ % bytes.length]), 100);
  }, {
    url: `${wsUrl}${wsUrl.includes('?') ? '&' : '?'}key=${encodeURIComponent(deviceKey)}`,
    pics: pictures.map((p) => p.toString('base64')),
  });
  const camPlay = await newPage('camera-play');
  await camPlay.goto(`${origin}/play/web/cam`);
  steps.cameraPlay = await until('/play of the camera room shows pictures', 60000, async () => {
    const r = await camPlay.evaluate(() => ({ mode: window.player.mode, pictures: window.player.pictures || 0 }));
    return { ok: r.mode === 'mjpeg' && r.pictures >= 3, ...r };
  });
  await camPlay.close();
  const camEmbed = await newPage('camera-embed');
  await camEmbed.goto(`${origin}/embed/web/cam`);
  steps.cameraEmbed = await sdkPlays(camEmbed, 'window.player', 'mjpeg');
  await camEmbed.close();

  // 8. Every other dashboard page, screenshotted.
  for (const tab of ['keys', 'webhooks', 'recordings', 'quotas', 'users', 'settings']) {
    await dash.click(`a[href="#/apps/web/${tab}"]`);
    await dash.waitForTimeout(700);
    await shoot(dash, tab);
  }
  await dash.click('a[href="#/cluster"]');
  await dash.waitForSelector('#cluster-h');
  await dash.waitForFunction(() => document.querySelectorAll('tbody tr').length >= 2);
  steps.clusterRows = await dash.evaluate(() => document.querySelectorAll('tbody tr').length);
  await shoot(dash, 'cluster');
  await device.close();

  // 9. The sample pages: publish from the fake camera on the origin, watch on the edge.
  const session = (await apiCall('POST', '/auth/login', { username: user, password: pass })).token;
  const pubToken = (await apiCall('POST', '/apps/web/tokens',
    { room: 'browser', identity: 'sample-publisher', canPublish: true, canSubscribe: false }, session)).token;
  const samplePub = await newPage('samples-publisher');
  await samplePub.goto(`${origin}/samples/web?room=browser&token=${encodeURIComponent(pubToken)}`);
  await samplePub.click('#pub-start');
  steps.samplePublisher = await until('the sample page publishes', 60000, async () => {
    const s = await samplePub.evaluate(async () => (window.samples.publisher ? window.samples.publisher.stats() : null));
    return { ok: !!s && s.state === 'connected' && s.bytesSent > 50000, ...s };
  });
  await shoot(samplePub, 'samples');
  const sampleView = await newPage('samples-viewer-on-edge');
  await sampleView.goto(`${edge}/samples/web?viewRoom=browser&autoplay=1`);
  const viewed = await until('the sample viewer decodes on the edge', 60000, async () => {
    const s = await sampleView.evaluate(async () => (window.samples.viewer ? window.samples.viewer.stats() : null));
    return { ok: !!s && (s.framesDecoded || 0) >= 25, ...s, url: sampleView.url() };
  });
  steps.sampleViewer = viewed;
  await sampleView.close();
  await samplePub.evaluate(() => window.samples.publisher.stop());
  await samplePub.close();

  // 10. The edge's `/` sends the dashboard to an origin.
  const edgeRoot = await newPage('edge-root');
  await edgeRoot.goto(`${edge}/`);
  await edgeRoot.waitForSelector('input[name=username], #apps-h');
  steps.edgeRoot = { url: edgeRoot.url() };
  await edgeRoot.close();

  await dash.click('button:has-text("Sign out")');
  await dash.waitForSelector('input[name=username]');
  steps.signedOut = true;

  console.log(JSON.stringify({ steps, consoleErrors, failedRequests, screenshots }));
} catch (e) {
  console.log(JSON.stringify({ error: e.message, steps, consoleErrors, failedRequests, screenshots }));
} finally {
  for (const c of children) c.kill('SIGINT');
  await browser.close();
  process.exit(0);
}
