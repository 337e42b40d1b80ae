// The streamhub dashboard: a single page app served by every origin from assets inside the
// binary. Preact + htm (vendored as /assets/preact-htm.mjs), no build step. The session (a JWT
// from POST /api/v1/auth/login) is kept in sessionStorage: it ends with the tab.
import { html, render, useState, useEffect, useRef, useCallback } from '/assets/preact-htm.mjs';
import StreamHub from '/sdk/streamhub.mjs';

const API = '/api/v1';
const PAGE = 20;
const enc = encodeURIComponent;

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let session = sessionStorage.getItem('streamhub.session');
let onSignedOut = () => {};

async function api(method, path, body) {
  const headers = {};
  if (session) headers.Authorization = `Bearer ${session}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `The node cannot be reached (${e.message}).`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    /* not JSON */
  }
  if (!resp.ok) {
    const message = (json && json.error && json.error.message) || text || `HTTP ${resp.status}`;
    if (resp.status === 401 && path !== '/auth/login') {
      signOutLocally();
      onSignedOut(`Your session ended: ${message}`);
    }
    throw new ApiError(resp.status, message);
  }
  if (!json || !('data' in json)) return json;
  // A paged list keeps its cursor (`next`) on the array.
  if (Array.isArray(json.data) && json.next !== undefined) json.data.next = json.next;
  return json.data;
}

function signOutLocally() {
  session = null;
  sessionStorage.removeItem('streamhub.session');
}

// ---------------------------------------------------------------- small pieces

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
const fmtBits = (bps) =>
  bps == null ? '—' : bps >= 1e6 ? `${(bps / 1e6).toFixed(1)} Mb/s` : `${Math.round(bps / 1e3)} kb/s`;

function ErrorText({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error.message || String(error)}</p>`;
}

function Copy({ text, label }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No clipboard permission (plain http, old browser): select the text instead.
      const t = document.createElement('textarea');
      t.value = text;
      document.body.appendChild(t);
      t.select();
      document.execCommand('copy');
      t.remove();
    }
    setDone(true);
    setTimeout(() => setDone(false), 1500);
  };
  return html`<button type="button" class="small" onClick=${copy} aria-label=${`Copy ${label || ''}`}>
    ${done ? 'Copied' : 'Copy'}</button>`;
}

function Secret({ label, value, name }) {
  return html`<div class="secret">
    <label>${label}</label>
    <div class="row"><code class="value" data-secret=${name || label}>${value}</code><${Copy} text=${value} label=${label} /></div>
  </div>`;
}

// A list shown PAGE rows at a time.
function Paged({ items, render: row, empty, head }) {
  const [page, setPage] = useState(0);
  const pages = Math.max(1, Math.ceil(items.length / PAGE));
  const p = Math.min(page, pages - 1);
  if (!items.length) return html`<p class="muted">${empty || 'Nothing yet.'}</p>`;
  const shown = items.slice(p * PAGE, (p + 1) * PAGE);
  return html`<div class="table-wrap"><table>${head ? html`<thead>${head}</thead>` : null}
      <tbody>${shown.map(row)}</tbody></table></div>
    ${pages > 1
      ? html`<nav class="pager" aria-label="pages">
          <button type="button" disabled=${p === 0} onClick=${() => setPage(p - 1)}>Previous</button>
          <span>page ${p + 1} of ${pages} (${items.length})</span>
          <button type="button" disabled=${p >= pages - 1} onClick=${() => setPage(p + 1)}>Next</button>
        </nav>`
      : null}`;
}

// Loads `path` (and again when `deps` change or `reload()` is called).
function useApi(path, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    if (!path) return undefined;
    setState((s) => ({ ...s, loading: true }));
    api('GET', path).then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState({ data: null, error, loading: false }),
    );
    return () => {
      live = false;
    };
  }, [path, tick, ...deps]);
  return { ...state, reload: useCallback(() => setTick((t) => t + 1), []) };
}

// A form whose submit runs `action` with a busy state and the error shown in words.
function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async (fn) => {
    setBusy(true);
    setError(null);
    try {
      return await fn();
    } catch (e) {
      setError(e);
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, run, setError };
}

const val = (form, name) => (form.elements[name] ? form.elements[name].value.trim() : '');

// A list from `path` with the usual actions: `submit(fn)` makes a form handler that runs
// `fn(form)` (its answer is kept as `made`: a secret shown once), resets the form and reloads;
// `remove(question, path)` deletes after a confirmation and reloads.
function useCollection(path, deps) {
  const list = useApi(path, deps);
  const [made, setMade] = useState(null);
  const a = useAction();
  const submit = (fn) => (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      const r = await fn(f);
      if (r !== undefined) setMade(r);
      f.reset();
      list.reload();
    });
  };
  const remove = (question, target) =>
    confirm(question) &&
    a.run(async () => {
      await api('DELETE', target);
      list.reload();
    });
  return { list, made, setMade, a, submit, remove };
}

// ---------------------------------------------------------------- sign in

function SignIn({ onIn, notice }) {
  const a = useAction();
  const submit = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      const r = await api('POST', '/auth/login', { username: val(f, 'username'), password: f.elements.password.value });
      session = r.token;
      sessionStorage.setItem('streamhub.session', session);
      onIn();
    });
  };
  return html`<main class="signin">
    <form onSubmit=${submit} aria-labelledby="signin-h">
      <h1 id="signin-h">streamhub</h1>
      ${notice ? html`<p class="notice">${notice}</p>` : null}
      <label>User <input name="username" autocomplete="username" required autofocus /></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" required /></label>
      <button type="submit" disabled=${a.busy}>${a.busy ? 'Signing in…' : 'Sign in'}</button>
      <${ErrorText} error=${a.error} />
    </form>
  </main>`;
}

// ---------------------------------------------------------------- apps

function Apps({ go }) {
  const apps = useApi('/apps');
  const a = useAction();
  const create = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      const body = { name: val(f, 'name') };
      if (val(f, 'displayName')) body.displayName = val(f, 'displayName');
      await api('POST', '/apps', body);
      f.reset();
      apps.reload();
    });
  };
  return html`<section aria-labelledby="apps-h">
    <h2 id="apps-h">Apps</h2>
    <form class="inline" onSubmit=${create}>
      <label>Name <input name="name" required pattern="[a-z0-9\\-]{1,32}" placeholder="live" title="a-z, 0-9 and -, up to 32" /></label>
      <label>Display name <input name="displayName" placeholder="Live events" /></label>
      <button type="submit" disabled=${a.busy}>${a.busy ? 'Creating…' : 'Create app'}</button>
    </form>
    <${ErrorText} error=${a.error || apps.error} />
    ${apps.loading && !apps.data ? html`<p class="muted">Loading…</p>` : null}
    ${apps.data
      ? html`<${Paged} items=${apps.data} empty="No app yet: create one above."
          head=${html`<tr><th>App</th><th>Display name</th><th>Playback</th><th>Created</th></tr>`}
          render=${(app) => html`<tr key=${app.name}>
            <td><a href=${`#/apps/${enc(app.name)}`}>${app.name}</a></td>
            <td>${app.displayName || ''}</td><td>${app.playback || 'public'}</td>
            <td>${fmtTime(app.createdAtMs)}</td></tr>`} />`
      : null}
  </section>`;
}

const TABS = [
  ['rooms', 'Live rooms'],
  ['ingress', 'Ingress'],
  ['cameras', 'Cameras'],
  ['tokens', 'Tokens'],
  ['keys', 'API keys'],
  ['webhooks', 'Webhooks'],
  ['recordings', 'Recordings'],
  ['quotas', 'Quotas'],
  ['users', 'Users'],
  ['settings', 'Settings'],
];

function App({ name, tab, go }) {
  const app = useApi(`/apps/${enc(name)}`, [name]);
  const t = TABS.some(([k]) => k === tab) ? tab : 'rooms';
  return html`<section aria-labelledby="app-h">
    <p><a href="#/apps">Apps</a> ›</p>
    <h2 id="app-h">${name}${app.data && app.data.displayName ? html` <span class="muted">${app.data.displayName}</span>` : null}</h2>
    <${ErrorText} error=${app.error} />
    <nav class="tabs" aria-label="app sections">
      ${TABS.map(([k, label]) => html`<a href=${`#/apps/${enc(name)}/${k}`} aria-current=${k === t ? 'page' : null}>${label}</a>`)}
    </nav>
    ${t === 'rooms' ? html`<${Rooms} app=${name} />` : null}
    ${t === 'ingress' ? html`<${Ingress} app=${name} />` : null}
    ${t === 'cameras' ? html`<${Cameras} app=${name} />` : null}
    ${t === 'tokens' ? html`<${Tokens} app=${name} />` : null}
    ${t === 'keys' ? html`<${Keys} app=${name} />` : null}
    ${t === 'webhooks' ? html`<${Webhooks} app=${name} />` : null}
    ${t === 'recordings' ? html`<${Recordings} app=${name} />` : null}
    ${t === 'quotas' ? html`<${Quotas} app=${name} />` : null}
    ${t === 'users' ? html`<${Users} app=${name} />` : null}
    ${t === 'settings' && app.data ? html`<${Settings} app=${app.data} reload=${app.reload} go=${go} />` : null}
  </section>`;
}

// A live preview through the SDK (WHEP, HLS fallback, MJPEG for camera rooms).
function Preview({ app, room, token }) {
  const box = useRef(null);
  const [state, setState] = useState('starting');
  useEffect(() => {
    const p = StreamHub.play(box.current, { app, room, token, controls: false });
    for (const s of ['live', 'waiting', 'stalled', 'ended', 'error']) {
      p.on(s, (e) => setState(s === 'live' ? `live · ${e.protocol}` : `${s}${e.reason ? `: ${e.reason}` : ''}`));
    }
    box.current.player = p;
    return () => p.stop();
  }, [app, room, token]);
  return html`<figure class="preview"><div class="screen" ref=${box} data-room=${room}></div>
    <figcaption>${state}</figcaption></figure>`;
}

// A viewer token for the previews of a private app's room (minted once per room and page).
function usePreviewToken(app, room, isPrivate) {
  const [token, setToken] = useState(undefined);
  useEffect(() => {
    if (!isPrivate) return;
    api('POST', `/apps/${enc(app)}/tokens`, { room, identity: 'dashboard-preview', canSubscribe: true, ttl: '1h' }).then(
      (r) => setToken(r.token),
      () => setToken(undefined),
    );
  }, [app, room, isPrivate]);
  return token;
}

function RoomCard({ app, r, isPrivate, live }) {
  const token = usePreviewToken(app, r.room, isPrivate);
  const video = (r.tracks || []).find((t) => t.kind === 'video');
  const bitrate = (r.tracks || []).reduce((s, t) => s + (t.bitrate || 0), 0);
  return html`<article class="card room" data-live-room=${r.room}>
    <h3>${r.room}</h3>
    ${!isPrivate || token ? html`<${Preview} app=${app} room=${r.room} token=${token} />` : html`<p class="muted">minting a preview token…</p>`}
    <dl>
      <dt>Publisher</dt><dd>${r.publisher ? r.publisher.protocol : '—'} on ${r.origin}</dd>
      <dt>Video</dt><dd>${video ? `${video.codec} ${video.width || ''}×${video.height || ''}` : '—'}</dd>
      <dt>Bitrate</dt><dd>${r.tracks && r.tracks.length ? fmtBits(bitrate) : '—'}</dd>
      <dt>Viewers</dt><dd data-viewers>${r.viewers != null ? r.viewers : '—'}</dd>
      <dt>Since</dt><dd>${fmtTime(r.startedAtMs)}</dd>
    </dl>
    <p><a href=${`/play/${enc(app)}/${enc(r.room)}`} target="_blank" rel="noopener">Open player</a>
      ${r.state === 'backstage'
        ? html` <span class="muted">backstage: only hosts watch</span> <button type="button" onClick=${() => live(r.room, true)}>Go live</button>`
        : null}</p>
  </article>`;
}

function Rooms({ app }) {
  const rooms = useApi(`/apps/${enc(app)}/rooms?include=objects`, [app]);
  const settings = useApi(`/apps/${enc(app)}`, [app]);
  const a = useAction();
  // Refresh every 5 s.
  useEffect(() => {
    const t = setInterval(() => rooms.reload(), 5000);
    return () => clearInterval(t);
  }, [app]);
  const isPrivate = !!(settings.data && settings.data.playback === 'token');
  const create = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      await api('POST', `/apps/${enc(app)}/rooms`, { name: val(f, 'name'), title: val(f, 'title') || undefined, backstage: f.elements.backstage.checked });
      f.reset();
      rooms.reload();
    });
  };
  const live = (room, on) =>
    a.run(async () => {
      await api('POST', `/apps/${enc(app)}/rooms/${enc(room)}/${on ? 'go-live' : 'stop-live'}`, {});
      rooms.reload();
    });
  const all = rooms.data || [];
  const publishing = all.filter((r) => !r.object);
  const objects = all.filter((r) => r.object);
  return html`<div>
    <${ErrorText} error=${rooms.error || a.error} />
    ${rooms.data && !publishing.length ? html`<p class="muted">No room is live. Publish to an ingress (RTMP, SRT, WHIP) or a camera key.</p>` : null}
    <div class="grid">
      ${publishing.map((r) => html`<${RoomCard} key=${r.room} app=${app} r=${r} isPrivate=${isPrivate} live=${live} />`)}
    </div>
    <h3>Rooms without a publisher (backstage, ended)</h3>
    <form class="inline" onSubmit=${create} aria-label="new room">
      <label>Name <input name="name" required /></label>
      <label>Title <input name="title" /></label>
      <label class="check"><input name="backstage" type="checkbox" checked /> backstage</label>
      <button type="submit" disabled=${a.busy}>Create room</button>
    </form>
    <${Paged} items=${objects} empty="No room object."
      head=${html`<tr><th>Room</th><th>State</th><th>Title</th><th></th></tr>`}
      render=${(o) => html`<tr key=${o.room}><td>${o.room}</td><td>${o.state}</td><td>${o.title || ''}</td>
        <td>${o.state === 'live'
          ? html`<button type="button" onClick=${() => live(o.room, false)}>Stop live</button>`
          : html`<button type="button" onClick=${() => live(o.room, true)}>Go live</button>`}</td></tr>`} />
  </div>`;
}

function Ingress({ app }) {
  const { list, made, setMade, a, submit, remove: del } = useCollection(`/apps/${enc(app)}/ingress`, [app]);
  const create = (e) => {
    const type = e.target.elements.type.value;
    if (type === 'url' && !val(e.target, 'url')) {
      e.preventDefault();
      a.setError(new Error('An RTSP pull needs the camera URL (rtsp://…).'));
      return;
    }
    submit((f) => {
      const body = { type, room: val(f, 'room') };
      if (val(f, 'name')) body.name = val(f, 'name');
      if (type === 'url') body.url = val(f, 'url');
      return api('POST', `/apps/${enc(app)}/ingress`, body);
    })(e);
  };
  const remove = (id) =>
    del(`Delete ingress ${id}? Its key stops working and a live publisher is dropped.`, `/apps/${enc(app)}/ingress/${enc(id)}`);
  return html`<div>
    <form class="inline" onSubmit=${create} aria-label="new ingress">
      <label>Type <select name="type"><option value="rtmp">RTMP (OBS)</option><option value="srt">SRT</option><option value="url">RTSP pull</option></select></label>
      <label>Room <input name="room" required /></label>
      <label>Name <input name="name" /></label>
      <label>RTSP URL <input name="url" placeholder="rtsp://user:pass@camera/stream" /></label>
      <button type="submit" disabled=${a.busy}>${a.busy ? 'Creating…' : 'Create ingress'}</button>
    </form>
    <${ErrorText} error=${a.error || list.error} />
    ${made && made.streamKey
      ? html`<div class="made" role="status">
          <p><strong>Shown once:</strong> copy the key now. In OBS: Settings › Stream › Service "Custom…".</p>
          ${made.type === 'rtmp'
            ? html`<${Secret} label="Server" name="server" value=${made.url} />
               ${made.rtmpsUrl ? html`<${Secret} label="Server (RTMPS)" name="rtmps" value=${made.rtmpsUrl} />` : null}
               <${Secret} label="Stream Key" name="stream-key" value=${made.streamKey} />`
            : html`<${Secret} label="URL" name="url" value=${made.url} />`}
          <button type="button" class="small" onClick=${() => setMade(null)}>Done</button>
        </div>`
      : null}
    ${list.data
      ? html`<${Paged} items=${list.data} empty="No ingress yet."
          head=${html`<tr><th>Room</th><th>Type</th><th>Name</th><th>State</th><th>Created</th><th></th></tr>`}
          render=${(i) => html`<tr key=${i.ingressId}><td>${i.room}</td><td>${i.type}</td><td>${i.name || ''}</td>
            <td>${i.type === 'url' ? `${i.state || '—'}${i.lastError ? ` (${i.lastError})` : ''}` : i.live ? 'live' : 'idle'}</td>
            <td>${fmtTime(i.createdAtMs)}</td>
            <td><button type="button" class="small danger" onClick=${() => remove(i.ingressId)}>Delete</button></td></tr>`} />`
      : null}
  </div>`;
}

function Cameras({ app }) {
  const { list, made, setMade, a, submit, remove: del } = useCollection(`/apps/${enc(app)}/ws-ingest`, [app]);
  const create = submit((f) =>
    api('POST', `/apps/${enc(app)}/ws-ingest`, { room: val(f, 'room'), name: val(f, 'name') || undefined }));
  const remove = (id) =>
    del(`Delete device key ${id}? The camera is disconnected.`, `/apps/${enc(app)}/ws-ingest/${enc(id)}`);
  const snippet = (m) => {
    const u = new URL(m.wsUrl);
    return `// ESP32 (arduinoWebSockets): one JPEG per binary message
#include <WebSocketsClient.h>
WebSocketsClient ws;
void setup() {
  // ... Wi-Fi and camera init ...
  ws.${u.protocol === 'wss:' ? 'beginSSL' : 'begin'}("${u.hostname}", ${u.port || (u.protocol === 'wss:' ? 443 : 80)}, "${u.pathname}${u.search}");
  ws.setExtraHeaders("Authorization: Bearer ${m.streamKey}");
}
void loop() {
  ws.loop();
  camera_fb_t *fb = esp_camera_fb_get();
  if (fb) { ws.sendBIN(fb->buf, fb->len); esp_camera_fb_return(fb); }
  delay(100); // 10 pictures per second
}`;
  };
  return html`<div>
    <form class="inline" onSubmit=${create} aria-label="new device key">
      <label>Room <input name="room" required /></label>
      <label>Name <input name="name" /></label>
      <button type="submit" disabled=${a.busy}>Create device key</button>
    </form>
    <${ErrorText} error=${a.error || list.error} />
    ${made
      ? html`<div class="made" role="status"><p><strong>Shown once:</strong> the device key.</p>
          <${Secret} label="Device key" name="device-key" value=${made.streamKey} />
          <${Secret} label="WebSocket URL" name="ws-url" value=${made.wsUrl} />
          <label>ESP32 sketch</label><pre>${snippet(made)}</pre><${Copy} text=${snippet(made)} label="sketch" />
          <button type="button" class="small" onClick=${() => setMade(null)}>Done</button></div>`
      : null}
    ${list.data
      ? html`<${Paged} items=${list.data} empty="No camera yet."
          head=${html`<tr><th>Room</th><th>Name</th><th>State</th><th>Watch</th><th></th></tr>`}
          render=${(d) => html`<tr key=${d.ingressId}><td>${d.room}</td><td>${d.name || ''}</td><td>${d.live ? 'live' : 'offline'}</td>
            <td><a href=${`/play/${enc(app)}/${enc(d.room)}`} target="_blank" rel="noopener">player</a></td>
            <td><button type="button" class="small danger" onClick=${() => remove(d.ingressId)}>Delete</button></td></tr>`} />`
      : null}
  </div>`;
}

function Tokens({ app }) {
  const [made, setMade] = useState(null);
  const a = useAction();
  const mint = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      const r = await api('POST', `/apps/${enc(app)}/tokens`, {
        room: val(f, 'room'),
        identity: val(f, 'identity'),
        canPublish: f.elements.canPublish.checked,
        canSubscribe: f.elements.canSubscribe.checked,
        ttl: val(f, 'ttl') || undefined,
      });
      setMade(r);
    });
  };
  const embed = made ? `<iframe src="${made.embedUrl}?token=${made.token}" width="640" height="360" allow="autoplay; fullscreen" allowfullscreen style="border:0"></iframe>` : '';
  return html`<div>
    <form class="inline" onSubmit=${mint} aria-label="mint a token">
      <label>Room <input name="room" required /></label>
      <label>Identity <input name="identity" required /></label>
      <label>TTL <input name="ttl" placeholder="1h" /></label>
      <label class="check"><input type="checkbox" name="canSubscribe" checked /> can watch</label>
      <label class="check"><input type="checkbox" name="canPublish" /> can publish</label>
      <button type="submit" disabled=${a.busy}>Mint token</button>
    </form>
    <${ErrorText} error=${a.error} />
    ${made
      ? html`<div class="made" role="status">
          <${Secret} label="Token" name="token" value=${made.token} />
          <${Secret} label="Play URL" name="play-url" value=${`${made.playUrl}?token=${made.token}`} />
          <${Secret} label="Embed snippet" name="embed" value=${embed} />
          <${Secret} label="WHIP URL (publish)" name="whip-url" value=${made.whipUrl} />
          <p class="muted">Expires ${fmtTime(made.expiresAt * 1000)}.</p></div>`
      : null}
  </div>`;
}

function Keys({ app }) {
  const { list, made, a, submit, remove: del } = useCollection('/api-keys', [app]);
  const create = submit((f) =>
    api('POST', '/api-keys', { name: val(f, 'name'), app, role: f.elements.role.value || undefined }));
  const remove = (id) => del(`Delete API key ${id}? It stops working at once.`, `/api-keys/${enc(id)}`);
  const mine = (list.data || []).filter((k) => k.app === app);
  return html`<div>
    <form class="inline" onSubmit=${create} aria-label="new API key">
      <label>Name <input name="name" required /></label>
      <label>Role <select name="role"><option value="">default</option><option>owner</option><option>admin</option><option>operator</option><option>viewer</option></select></label>
      <button type="submit" disabled=${a.busy}>Create API key</button>
    </form>
    <${ErrorText} error=${a.error || list.error} />
    ${made ? html`<div class="made" role="status"><p><strong>Shown once.</strong></p><${Secret} label="API key" name="api-key" value=${made.secret} /></div>` : null}
    <${Paged} items=${mine} empty="No API key for this app."
      head=${html`<tr><th>Name</th><th>Prefix</th><th>Role</th><th>Created</th><th></th></tr>`}
      render=${(k) => html`<tr key=${k.id}><td>${k.name}</td><td><code>${k.prefix}</code></td><td>${k.role || 'default'}</td>
        <td>${fmtTime(k.createdAtMs)}</td><td><button type="button" class="small danger" onClick=${() => remove(k.id)}>Delete</button></td></tr>`} />
  </div>`;
}

function Webhooks({ app }) {
  const { list, made, a, submit, remove: del } = useCollection(`/apps/${enc(app)}/webhooks`, [app]);
  const [open, setOpen] = useState(null);
  const create = submit((f) => {
    const events = val(f, 'events') ? val(f, 'events').split(',').map((x) => x.trim()).filter(Boolean) : ['*'];
    return api('POST', `/apps/${enc(app)}/webhooks`, { url: val(f, 'url'), events });
  });
  const remove = (id) => del(`Delete webhook ${id}?`, `/apps/${enc(app)}/webhooks/${enc(id)}`);
  return html`<div>
    <form class="inline" onSubmit=${create} aria-label="new webhook">
      <label>URL <input name="url" type="url" required placeholder="https://example.com/hooks" /></label>
      <label>Events <input name="events" placeholder="* or room.started, room.ended" /></label>
      <button type="submit" disabled=${a.busy}>Add webhook</button>
    </form>
    <${ErrorText} error=${a.error || list.error} />
    ${made ? html`<div class="made" role="status"><p><strong>Shown once:</strong> the signing secret.</p><${Secret} label="Secret" name="webhook-secret" value=${made.secret} /></div>` : null}
    ${list.data
      ? html`<${Paged} items=${list.data} empty="No webhook."
          head=${html`<tr><th>URL</th><th>Events</th><th>Enabled</th><th></th></tr>`}
          render=${(w) => html`<tr key=${w.id}><td>${w.url}</td><td>${w.events.join(', ')}</td><td>${w.enabled ? 'yes' : 'no'}</td>
            <td><button type="button" class="small" onClick=${() => setOpen(open === w.id ? null : w.id)}>Deliveries</button>
            <button type="button" class="small danger" onClick=${() => remove(w.id)}>Delete</button></td></tr>`} />`
      : null}
    ${open ? html`<${Deliveries} app=${app} id=${open} />` : null}
  </div>`;
}

function Deliveries({ app, id }) {
  const log = useApi(`/apps/${enc(app)}/webhooks/${enc(id)}/deliveries`, [id]);
  const a = useAction();
  const again = (d) =>
    a.run(async () => {
      await api('POST', `/apps/${enc(app)}/webhooks/${enc(id)}/deliveries/${enc(d)}/redeliver`, {});
      log.reload();
    });
  return html`<div><h3>Deliveries of ${id}</h3><${ErrorText} error=${a.error || log.error} />
    ${log.data
      ? html`<${Paged} items=${log.data} empty="Nothing delivered yet."
          head=${html`<tr><th>Event</th><th>Type</th><th>Status</th><th>Attempts</th><th>Last</th><th></th></tr>`}
          render=${(d) => html`<tr key=${d.id}><td><code>${d.id}</code></td><td>${d.type}</td><td>${d.status}</td><td>${d.attempts}</td>
            <td>${d.lastStatus || d.lastError || ''} ${d.lastLatencyMs != null ? `${d.lastLatencyMs} ms` : ''}</td>
            <td>${d.status === 'retrying'
              ? html`<span class="muted">next try ${fmtTime(d.nextAttemptAtMs)}</span>`
              : html`<button type="button" class="small" onClick=${() => again(d.id)}>Redeliver</button>`}</td></tr>`} />`
      : null}</div>`;
}

function VodPlayer({ url }) {
  const v = useRef(null);
  useEffect(() => {
    let hls = null;
    (async () => {
      if (!window.Hls) {
        await new Promise((res, rej) => {
          const s = document.createElement('script');
          s.src = '/assets/hls.light.min.js';
          s.onload = res;
          s.onerror = rej;
          document.head.appendChild(s);
        });
      }
      if (window.Hls && window.Hls.isSupported()) {
        hls = new window.Hls();
        hls.loadSource(url);
        hls.attachMedia(v.current);
      } else {
        v.current.src = url;
      }
    })();
    return () => hls && hls.destroy();
  }, [url]);
  return html`<video class="vod" ref=${v} controls playsinline></video>`;
}

// The app's S3 storage for recordings: shown without its secrets, replaced, tested, removed.
function Storage({ app }) {
  const info = useApi(`/apps/${enc(app)}`, [app]);
  const has = !!(info.data && info.data.storage);
  const current = useApi(has ? `/apps/${enc(app)}/storage` : null, [app, has]);
  const [test, setTest] = useState(null);
  const a = useAction();
  const save = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      await api('PUT', `/apps/${enc(app)}/storage`, {
        endpoint: val(f, 'endpoint'), region: val(f, 'region'), bucket: val(f, 'bucket'),
        prefix: val(f, 'prefix') || undefined, pathStyle: f.elements.pathStyle.checked,
        accessKeyId: val(f, 'accessKeyId'), secretAccessKey: f.elements.secretAccessKey.value,
      });
      f.elements.secretAccessKey.value = '';
      info.reload();
    });
  };
  const check = () =>
    a.run(async () => {
      setTest({ running: true });
      setTest(await api('POST', `/apps/${enc(app)}/storage/test`, {}));
    });
  const remove = () =>
    confirm('Remove the storage? New recordings are refused until one is set.') &&
    a.run(async () => {
      await api('DELETE', `/apps/${enc(app)}/storage`);
      info.reload();
    });
  const c = current.data || {};
  return html`<details class="card" open=${!has}>
    <summary><strong>Storage</strong> ${has ? html`<span class="muted">s3 bucket ${c.bucket || ''} at ${c.endpoint || ''}</span>` : html`<span class="muted">none: recordings are refused</span>`}</summary>
    <form class="inline" onSubmit=${save} aria-label="storage">
      <label>Endpoint <input name="endpoint" required placeholder="https://s3.eu-west-1.amazonaws.com" value=${c.endpoint || ''} /></label>
      <label>Region <input name="region" required value=${c.region || 'us-east-1'} /></label>
      <label>Bucket <input name="bucket" required value=${c.bucket || ''} /></label>
      <label>Prefix <input name="prefix" value=${c.prefix || ''} /></label>
      <label class="check"><input type="checkbox" name="pathStyle" checked=${!!c.pathStyle} /> path-style</label>
      <label>Access key id <input name="accessKeyId" required autocomplete="off" value=${c.accessKeyId || ''} /></label>
      <label>Secret access key <input name="secretAccessKey" type="password" required autocomplete="new-password" /></label>
      <button type="submit" disabled=${a.busy}>${has ? 'Replace storage' : 'Save storage'}</button>
    </form>
    ${has
      ? html`<p><button type="button" onClick=${check} disabled=${a.busy}>Test write, read, delete</button>
          <button type="button" class="danger" onClick=${remove}>Remove storage</button>
          ${test && test.running ? html` <span class="muted">testing…</span>` : null}
          ${test && test.ok ? html` <span class="ok">works (${test.tookMs} ms)</span>` : null}
          ${test && test.ok === false ? html` <span class="error">${test.step} failed (${test.kind}): ${test.error}</span>` : null}</p>`
      : null}
    <${ErrorText} error=${a.error || current.error} />
  </details>`;
}

function Recordings({ app }) {
  const [pages, setPages] = useState([null]);
  const cursor = pages[pages.length - 1];
  const list = useApi(`/apps/${enc(app)}/recordings?limit=${PAGE}${cursor ? `&after=${enc(cursor)}` : ''}`, [app, cursor]);
  const [play, setPlay] = useState(null);
  const a = useAction();
  const open = (id) =>
    a.run(async () => {
      const r = await api('GET', `/apps/${enc(app)}/recordings/${enc(id)}`);
      if (!r.urls) throw new Error('Nothing of this recording is uploaded yet.');
      setPlay(r.urls.hls);
    });
  const rows = list.data || [];
  return html`<div>
    <${Storage} app=${app} />
    <${ErrorText} error=${a.error || list.error} />
    ${play ? html`<${VodPlayer} url=${play} />` : null}
    <div class="table-wrap"><table><thead><tr><th>Room</th><th>State</th><th>Started</th><th>Duration</th><th></th></tr></thead><tbody>
      ${rows.map((r) => html`<tr key=${r.id}><td>${r.room}</td><td>${r.state}</td><td>${fmtTime(r.startedAtMs)}</td>
        <td>${r.durationMs != null ? `${Math.round(r.durationMs / 1000)} s` : '—'}</td>
        <td><button type="button" class="small" onClick=${() => open(r.id)}>Play</button></td></tr>`)}
    </tbody></table></div>
    ${!rows.length ? html`<p class="muted">No recording. An app records when it has storage and a room records (go-live with recording, or record: always).</p>` : null}
    <nav class="pager" aria-label="pages">
      <button type="button" disabled=${pages.length < 2} onClick=${() => setPages(pages.slice(0, -1))}>Newer</button>
      <button type="button" disabled=${!(list.data && list.data.next)} onClick=${() => setPages([...pages, list.data.next])}>Older</button>
    </nav>
  </div>`;
}

const QUOTAS = [
  ['liveRooms', 'Live rooms'],
  ['publishers', 'Publishers'],
  ['viewers', 'Viewers'],
  ['ingestKbps', 'Ingest kb/s per room'],
  ['ingresses', 'Ingresses'],
  ['recordingHoursPerMonth', 'Recording hours / month'],
];

function Quotas({ app }) {
  const q = useApi(`/apps/${enc(app)}/quotas`, [app]);
  const a = useAction();
  const save = (e) => {
    e.preventDefault();
    const f = e.target;
    const body = {};
    for (const [k] of QUOTAS) if (val(f, k) !== '') body[k] = Number(val(f, k));
    a.run(async () => {
      await api('PUT', `/apps/${enc(app)}/quotas`, body);
      q.reload();
    });
  };
  const limits = (q.data && (q.data.quotas || q.data.limits)) || q.data || {};
  const usage = (q.data && q.data.usage) || {};
  return html`<form onSubmit=${save} aria-label="quotas">
    <${ErrorText} error=${a.error || q.error} />
    <div class="table-wrap"><table><thead><tr><th>Quota</th><th>Limit (empty: unlimited)</th><th>Used now</th></tr></thead><tbody>
      ${QUOTAS.map(([k, label]) => html`<tr key=${k}><td><label for=${`q-${k}`}>${label}</label></td>
        <td><input id=${`q-${k}`} name=${k} type="number" min="0" value=${limits[k] != null ? limits[k] : ''} /></td>
        <td>${(k === 'recordingHoursPerMonth' ? usage.recordingHoursThisMonth : usage[k]) ?? '—'}</td></tr>`)}
    </tbody></table></div>
    <button type="submit" disabled=${a.busy}>${a.busy ? 'Saving…' : 'Save quotas'}</button>
  </form>`;
}

function Users({ app }) {
  const { list, a, submit, remove: del } = useCollection('/users', [app]);
  const create = submit(async (f) => {
    await api('POST', '/users', { username: val(f, 'username'), password: f.elements.password.value, roles: [{ app, role: f.elements.role.value }] });
  });
  const remove = (u) => del(`Delete user ${u}?`, `/users/${enc(u)}`);
  const here = (list.data || []).filter((u) => (u.roles || []).some((r) => r.app === app || r.app === '*'));
  return html`<div>
    <form class="inline" onSubmit=${create} aria-label="new user">
      <label>User <input name="username" required autocomplete="off" /></label>
      <label>Password <input name="password" type="password" minlength="10" required autocomplete="new-password" /></label>
      <label>Role <select name="role"><option>viewer</option><option>operator</option><option>admin</option><option>owner</option></select></label>
      <button type="submit" disabled=${a.busy}>Add user</button>
    </form>
    <${ErrorText} error=${a.error || list.error} />
    <${Paged} items=${here} empty="No user has a role in this app."
      head=${html`<tr><th>User</th><th>Roles</th><th></th></tr>`}
      render=${(u) => html`<tr key=${u.username}><td>${u.username}</td><td>${(u.roles || []).map((r) => `${r.role}@${r.app}`).join(', ')}</td>
        <td><button type="button" class="small danger" onClick=${() => remove(u.username)}>Delete</button></td></tr>`} />
  </div>`;
}

function Settings({ app, reload, go }) {
  const a = useAction();
  const [saved, setSaved] = useState(false);
  const save = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      await api('PATCH', `/apps/${enc(app.name)}`, {
        displayName: val(f, 'displayName') || null,
        playback: f.elements.playback.value,
        backstageByDefault: f.elements.backstageByDefault.checked,
      });
      setSaved(true);
      reload();
    });
  };
  const del = () => {
    const typed = prompt(`Delete app ${app.name}, its ingresses, keys and live rooms? Type its name to confirm.`);
    if (typed !== app.name) return;
    a.run(async () => {
      await api('DELETE', `/apps/${enc(app.name)}`);
      go('#/apps');
    });
  };
  return html`<div>
    <form onSubmit=${save} aria-label="app settings" class="stack">
      <label>Display name <input name="displayName" value=${app.displayName || ''} /></label>
      <label>Playback <select name="playback" value=${app.playback || 'public'}>
        <option value="public">public (anyone with the URL)</option><option value="token">token (viewer tokens)</option></select></label>
      <label class="check"><input type="checkbox" name="backstageByDefault" checked=${!!app.backstageByDefault} /> new rooms start in backstage</label>
      <button type="submit" disabled=${a.busy}>Save</button> ${saved ? html`<span class="muted">Saved.</span>` : null}
    </form>
    <${ErrorText} error=${a.error} />
    <h3>Samples</h3>
    <p><a href=${`/samples/${enc(app.name)}`} target="_blank" rel="noopener">/samples/${app.name}</a>: public pages that publish and play with the SDK.</p>
    <h3>Danger zone</h3>
    <button type="button" class="danger" onClick=${del}>Delete app…</button>
  </div>`;
}

// ---------------------------------------------------------------- cluster

function Cluster() {
  const status = useApi('/cluster');
  const nodes = useApi('/nodes');
  const tokens = useApi('/cluster/join-tokens');
  const [made, setMade] = useState(null);
  const a = useAction();
  useEffect(() => {
    const t = setInterval(() => {
      status.reload();
      nodes.reload();
    }, 5000);
    return () => clearInterval(t);
  }, []);
  const mint = (e) => {
    e.preventDefault();
    const f = e.target;
    a.run(async () => {
      const r = await api('POST', '/cluster/join-tokens', { role: f.elements.role.value, uses: Number(val(f, 'uses') || 1), ttl: val(f, 'ttl') || undefined });
      setMade(r);
      tokens.reload();
    });
  };
  const s = status.data || {};
  return html`<section aria-labelledby="cluster-h">
    <h2 id="cluster-h">Cluster</h2>
    <${ErrorText} error=${status.error || nodes.error || tokens.error || a.error} />
    <p>Leader <strong>${s.leader || '—'}</strong> · term ${s.term != null ? s.term : '—'} · voters ${(s.voters || []).join(', ')}
      ${s.learners && s.learners.length ? ` · learners ${s.learners.join(', ')}` : ''} ${s.partial ? html`<span class="error">(partial view: the leader is unreachable)</span>` : null}</p>
    ${nodes.data
      ? html`<${Paged} items=${nodes.data}
          head=${html`<tr><th>Node</th><th>Role</th><th>Region</th><th>Health</th><th>Load</th><th>Version</th><th>URL</th></tr>`}
          render=${(n) => html`<tr key=${n.name}><td>${n.name}</td><td>${n.role}</td><td>${n.region}</td>
            <td class=${n.status === 'up' ? 'ok' : 'error'}>${n.status}</td>
            <td>${n.load ? `${n.load.rooms} rooms · ${n.load.viewers} viewers · ${Math.round(n.load.cpu || 0)}% CPU · ${fmtBits(n.load.egressBps)}` : '—'}</td>
            <td>${n.version}</td><td><a href=${n.httpUrl}>${n.httpUrl}</a></td></tr>`} />`
      : null}
    <h3>Join tokens</h3>
    <form class="inline" onSubmit=${mint} aria-label="mint a join token">
      <label>Role <select name="role"><option>edge</option><option>origin</option></select></label>
      <label>Uses <input name="uses" type="number" min="1" max="100" value="1" /></label>
      <label>TTL <input name="ttl" placeholder="15m" /></label>
      <button type="submit" disabled=${a.busy}>Mint join token</button>
    </form>
    ${made
      ? html`<div class="made" role="status"><p><strong>Shown once.</strong> Start the new node with:</p>
          <${Secret} label="Command" name="join-command"
            value=${`STREAMHUB_JOIN_TOKEN=${made.token} streamhub-${made.role} --node-id <name> --public-url <https://new-node.example.com> --join ${location.origin}`} />
          <p class="muted">The token goes by environment (flags show in <code>ps</code>); see docs/cluster.md.</p></div>`
      : null}
    ${tokens.data
      ? html`<${Paged} items=${tokens.data} empty="No valid join token."
          head=${html`<tr><th>Id</th><th>Role</th><th>Uses left</th><th>Expires</th></tr>`}
          render=${(t) => html`<tr key=${t.id}><td><code>${t.id}</code></td><td>${t.role}</td><td>${t.usesLeft}</td><td>${fmtTime(t.expiresAtMs)}</td></tr>`} />`
      : null}
  </section>`;
}

// ---------------------------------------------------------------- shell

function useHash() {
  const [hash, setHash] = useState(location.hash || '#/apps');
  useEffect(() => {
    const f = () => setHash(location.hash || '#/apps');
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return hash;
}

function Shell() {
  const [signedIn, setSignedIn] = useState(!!session);
  const [notice, setNotice] = useState(null);
  const hash = useHash();
  onSignedOut = (why) => {
    setNotice(why);
    setSignedIn(false);
  };
  if (!signedIn) return html`<${SignIn} notice=${notice} onIn=${() => { setNotice(null); setSignedIn(true); }} />`;
  const go = (h) => {
    location.hash = h;
  };
  const signOut = async () => {
    try {
      await api('POST', '/auth/logout');
    } catch (_) {
      /* the session is dropped here either way */
    }
    signOutLocally();
    setSignedIn(false);
  };
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  let page;
  if (parts[0] === 'cluster') page = html`<${Cluster} />`;
  else if (parts[0] === 'apps' && parts[1]) page = html`<${App} name=${parts[1]} tab=${parts[2]} go=${go} />`;
  else page = html`<${Apps} go=${go} />`;
  return html`<div class="shell">
    <header><a class="brand" href="#/apps">streamhub</a>
      <nav aria-label="main"><a href="#/apps" aria-current=${parts[0] !== 'cluster' ? 'page' : null}>Apps</a>
        <a href="#/cluster" aria-current=${parts[0] === 'cluster' ? 'page' : null}>Cluster</a></nav>
      <button type="button" class="small" onClick=${signOut}>Sign out</button></header>
    <main>${page}</main></div>`;
}

const root = document.getElementById('root');
root.textContent = '';
render(html`<${Shell} />`, root);
window.dashboard = { ready: true };
