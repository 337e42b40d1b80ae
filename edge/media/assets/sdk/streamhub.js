// streamhub browser SDK (served as /sdk/streamhub.js, a classic script defining
// window.StreamHub, and /sdk/streamhub.mjs, an ES module). docs/sdk.md documents it.
//
//   const player = StreamHub.play(container, { app, room, token });
//   player.on('live', (e) => ...);   // also 'waiting', 'stalled', 'ended', 'error'
//   player.stats();                  // { protocol, bitrateKbps, latencyMs, framesDecoded }
//   player.stop();
//
//   const pub = await StreamHub.publish(whipUrl, token, mediaStream);
//   pub.stop();
//
// No dependency: hls.js is loaded from the node (/assets/hls.light.min.js) only when HLS plays.

const VERSION = '1.1.0';

const enc = encodeURIComponent;

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// The message of an API error answer ({"error": {"message"}}), or its text.
async function reasonOf(resp) {
  const text = await resp.text().catch(() => '');
  try {
    return JSON.parse(text).error.message || text;
  } catch (_) {
    return text || `HTTP ${resp.status}`;
  }
}

function withToken(url, token) {
  if (!token) return url;
  return url + (url.includes('?') ? '&' : '?') + 'token=' + enc(token);
}

// A tiny event emitter.
class Emitter {
  constructor() {
    this.handlers = {};
  }
  on(type, fn) {
    (this.handlers[type] = this.handlers[type] || []).push(fn);
    return this;
  }
  off(type, fn) {
    this.handlers[type] = (this.handlers[type] || []).filter((f) => f !== fn);
    return this;
  }
  emit(type, detail) {
    for (const fn of this.handlers[type] || []) {
      try {
        fn(detail);
      } catch (e) {
        console.warn('streamhub: handler of', type, 'threw', e);
      }
    }
  }
}

let hlsLoading = null;
function loadHls(base) {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsLoading) {
    hlsLoading = new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = `${base}/assets/hls.light.min.js`;
      s.onload = () => resolve(window.Hls);
      s.onerror = () => {
        hlsLoading = null;
        reject(new Error('hls.js could not be loaded'));
      };
      document.head.appendChild(s);
    });
  }
  return hlsLoading;
}

// Whether a WHEP session still lives on its node: 'alive' (204), 'gone' (404, or the
// connection refused while this browser is online), 'silent' (no answer within 1 s) or
// 'unknown' (any other answer).
async function sessionCheck(resource) {
  try {
    const r = await fetch(resource, { cache: 'no-store', signal: AbortSignal.timeout(1000) });
    if (r.status === 204) return 'alive';
    return r.status === 404 ? 'gone' : 'unknown';
  } catch (e) {
    if (e.name === 'TimeoutError') return 'silent';
    return navigator.onLine === false ? 'unknown' : 'gone';
  }
}

// Opens a WHEP or WHIP session: POSTs the offer of `pc`, applies the answer, waits until it
// connects (at most `timeoutMs`). Returns the session's resource URL.
async function negotiate(pc, url, token, timeoutMs) {
  await pc.setLocalDescription(await pc.createOffer());
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(url, {
    method: 'POST',
    headers,
    body: pc.localDescription.sdp,
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (resp.status !== 201) {
    const err = new Error(`${resp.status}: ${await reasonOf(resp)}`);
    err.status = resp.status;
    throw err;
  }
  const resource = new URL(resp.headers.get('Location'), new URL(url, location.href)).href;
  const answer = await resp.text();
  try {
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    await new Promise((resolve, reject) => {
      if (pc.connectionState === 'connected') return resolve();
      const timer = setTimeout(
        () => reject(new Error(`WebRTC did not connect within ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
      pc.addEventListener('connectionstatechange', () => {
        if (pc.connectionState === 'connected') {
          clearTimeout(timer);
          resolve();
        } else if (pc.connectionState === 'failed') {
          clearTimeout(timer);
          reject(new Error('WebRTC connection failed'));
        }
      });
    });
  } catch (e) {
    fetch(resource, { method: 'DELETE' }).catch(() => {});
    throw e;
  }
  return resource;
}

// Calls `onPicture` each time the picture an <img> shows changes (sampled every 250 ms on an
// 8x8 canvas); returns the interval to clear.
function pictureCounter(img, onPicture) {
  const canvas = document.createElement('canvas');
  canvas.width = 8;
  canvas.height = 8;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  let last = null;
  return setInterval(() => {
    if (!img.naturalWidth) return;
    try {
      ctx.drawImage(img, 0, 0, 8, 8);
      const d = ctx.getImageData(0, 0, 8, 8).data;
      let h = 0;
      for (let i = 0; i < d.length; i += 1) h = (h * 31 + d[i]) | 0;
      if (h !== last) {
        last = h;
        onPicture();
      }
    } catch (_) {
      /* not readable (no CORS): not counted */
    }
  }, 250);
}

class Player extends Emitter {
  constructor(container, opts) {
    super();
    if (!opts || !opts.app || !opts.room) throw new Error('play: app and room are required');
    this.container = container;
    this.opts = opts;
    this.base = (opts.base || location.origin).replace(/\/$/, '');
    // The node playing (its base URL and name, once steering named it), and the other nodes the
    // playback API named: asked when the node playing fails.
    this.node = null;
    this.nodeName = opts.node || null;
    this.alternates = [];
    this.region = null;
    this.state = 'starting';
    this.protocol = null;
    this.reason = null;
    this.reconnects = 0;
    this.stopped = false;
    this.session = 0;
    this.counters = { bytes: 0, at: performance.now(), bitrateKbps: null };
    this.video = document.createElement('video');
    this.video.muted = opts.muted !== false;
    this.video.autoplay = true;
    this.video.playsInline = true;
    this.video.controls = opts.controls !== false;
    if (opts.poster) this.video.poster = opts.poster;
    this.video.style.cssText = 'width:100%;height:100%;background:#000;display:block';
    this.img = document.createElement('img');
    this.img.alt = `${opts.app}/${opts.room}`;
    this.img.style.cssText = 'width:100%;height:100%;object-fit:contain;background:#000;display:none';
    container.append(this.video, this.img);
    this.video.addEventListener('playing', () => this.setState('live'));
    this.run(this.session);
  }

  setState(state, detail) {
    if (state === this.state && state !== 'error') return;
    this.state = state;
    this.emit(state, Object.assign({ protocol: this.protocol, reason: this.reason }, detail));
  }

  // Where to play from: the node steering chooses (the viewer's region), or `base`. `avoid`
  // names a node that just failed this player: steering leaves it out (the registry needs a
  // few seconds to see a node dead), asked of the node playing, then `base`, then the other
  // nodes steering named.
  async urls(avoid) {
    const { app, room, token } = this.opts;
    let node = this.node || this.base;
    if (this.opts.steer !== false || avoid !== undefined) {
      const q = new URLSearchParams();
      if (avoid) q.set('avoid', avoid);
      if (this.region) q.set('region', this.region);
      const asks = [...new Set([node, this.base, ...this.alternates])];
      for (const at of asks) {
        try {
          const r = await fetch(`${at}/api/v1/apps/${enc(app)}/rooms/${enc(room)}/playback?${q}`, {
            cache: 'no-store',
            signal: AbortSignal.timeout(avoid !== undefined ? 1000 : 5000),
          });
          if (!r.ok) continue;
          const d = (await r.json()).data;
          node = new URL(d.playUrl).origin;
          this.nodeName = d.node;
          this.alternates = (d.alternates || []).filter((u) => u !== node);
          this.region = d.clientRegion || this.region;
          break;
        } catch (_) {
          /* that node is gone: ask the next */
        }
      }
    }
    if (this.opts.steer === false && avoid === undefined && !this.learned) {
      // Not steering: still learn the other nodes to ask, and this node's name, should it fail.
      this.learned = true;
      try {
        const r = await fetch(`${node}/api/v1/apps/${enc(app)}/rooms/${enc(room)}/playback`, {
          cache: 'no-store',
          signal: AbortSignal.timeout(5000),
        });
        if (r.ok) {
          const d = (await r.json()).data;
          const chosen = new URL(d.playUrl).origin;
          this.alternates = [chosen, ...(d.alternates || [])].filter((u) => u !== node);
          this.region = d.clientRegion || this.region;
          this.nodeName = this.nodeName || d.answeredBy || null;
        }
      } catch (_) {
        /* no alternates: this node only */
      }
    }
    this.node = node;
    const path = `${enc(app)}/${enc(room)}`;
    return {
      node,
      whep: `${node}/whep/${path}`,
      hls: withToken(`${node}/hls/${path}/index.m3u8`, token),
      mjpeg: withToken(`${node}/live/${path}/mjpeg`, token),
      info: withToken(`${node}/live/${path}/info`, token),
    };
  }

  // What the room is now: 'camera' (JPEG pictures), 'av' (audio/video), 'waiting' (not live
  // or backstage), or throws a refusal (401/403/429: the token or the quota).
  async probe(u) {
    const r = await fetch(u.info, { cache: 'no-store', signal: AbortSignal.timeout(5000) });
    if (r.ok) {
      const info = (await r.json()).data;
      if (!info.live) return { kind: 'waiting', reason: 'the room is not live yet' };
      return { kind: info.camera ? 'camera' : 'av' };
    }
    const reason = await reasonOf(r);
    if (r.status === 425 || r.status === 503 || r.status === 404) return { kind: 'waiting', reason };
    const err = new Error(reason);
    err.status = r.status;
    throw err;
  }

  async run(session) {
    let wasLive = false;
    let attempt = 0;
    // The node that failed the last playback (`null`: the name is not known), or undefined.
    let avoid;
    while (!this.stopped && session === this.session) {
      let u;
      let room;
      try {
        u = await this.urls(avoid);
        avoid = undefined;
        room = await this.probe(u);
      } catch (e) {
        if (e.status === 401 || e.status === 403 || e.status === 429) {
          this.reason = e.message;
          this.setState('error', { reason: e.message, fatal: true });
          return;
        }
        // The node did not answer at all: ask steering for another one next time.
        if (!e.status) avoid = this.nodeName;
        room = { kind: 'waiting', reason: e.message };
      }
      if (this.stopped || session !== this.session) return;
      if (room.kind === 'waiting') {
        this.reason = room.reason || 'the room is not live yet';
        if (wasLive && this.state !== 'ended' && this.state !== 'waiting') {
          this.setState('ended');
        }
        this.setState('waiting');
        await sleep(2000);
        continue;
      }
      try {
        this.reason = null;
        await this.playKind(room.kind, u);
        wasLive = true;
        attempt = 0;
        // Returns when playback stalled or failed: probe again.
        this.lost = false;
        await this.watch();
      } catch (e) {
        this.reason = e.message;
        this.setState('error', { reason: e.message });
      }
      this.teardown();
      if (this.stopped || session !== this.session) return;
      this.reconnects += 1;
      // A node that lost the session or failed outright: steer away from it at once.
      const lost = this.lost;
      this.lost = false;
      if (lost) avoid = this.nodeName;
      // A lost node's viewers all move at once: spread them over 300 ms.
      const delay =
        lost && attempt === 0 ? Math.random() * 300 : Math.min(8000, 500 * 2 ** Math.min(attempt, 4));
      attempt += 1;
      await sleep(delay);
    }
  }

  async playKind(kind, u) {
    const prefer = this.opts.prefer;
    if (kind === 'camera') return this.playMjpeg(u);
    if (prefer !== 'hls' && window.RTCPeerConnection) {
      try {
        return await this.playWhep(u);
      } catch (e) {
        this.whepError = e.message;
        if (e.status === 401 || e.status === 403) throw e;
      }
    }
    return this.playHls(u);
  }

  async playWhep(u) {
    this.protocol = 'whep';
    const pc = new RTCPeerConnection();
    this.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      this.video.srcObject = stream;
    };
    this.video.style.display = 'block';
    this.img.style.display = 'none';
    try {
      this.resource = await negotiate(pc, u.whep, this.opts.token, 6000);
    } catch (e) {
      pc.close();
      this.pc = null;
      throw e;
    }
  }

  async playHls(u) {
    this.protocol = 'hls';
    this.video.style.display = 'block';
    this.img.style.display = 'none';
    if (this.video.canPlayType('application/vnd.apple.mpegurl') && !window.MediaSource) {
      this.video.src = u.hls;
      return;
    }
    const Hls = await loadHls(u.node);
    if (!Hls || !Hls.isSupported()) throw new Error('this browser plays neither WebRTC nor HLS');
    const hls = new Hls({ lowLatencyMode: true });
    this.hls = hls;
    this.hlsFailed = null;
    this.hlsNodeFailed = false;
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (!data.fatal || this.hlsFailed) return;
      this.hlsFailed = `HLS: ${data.details}`;
      // The node failed (no answer, or a server error): steer away from it. A room that ended
      // or a media error starts again where it was.
      const code = data.response ? data.response.code : 0;
      this.hlsNodeFailed = data.type === Hls.ErrorTypes.NETWORK_ERROR && (!code || code >= 500);
    });
    // A draining node says so on its playlists: move before it stops.
    hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
      const n = data.networkDetails;
      let draining = null;
      try {
        if (n && n.getResponseHeader) draining = n.getResponseHeader('x-streamhub-draining');
        else if (n && n.headers) draining = n.headers.get('x-streamhub-draining');
      } catch (_) {
        /* not readable */
      }
      // Once per draining node: back on it (steering had nowhere else), stay.
      if (draining && !this.hlsFailed && this.drainSeen !== draining) {
        this.drainSeen = draining;
        this.hlsFailed = `${draining} is draining`;
        this.hlsNodeFailed = true;
      }
    });
    hls.on(Hls.Events.FRAG_LOADED, (_, data) => {
      this.counters.bytes += (data.frag && data.frag.stats && data.frag.stats.loaded) || 0;
    });
    hls.loadSource(u.hls);
    hls.attachMedia(this.video);
    this.skipBufferHoles();
  }

  // hls.js jumps a hole in the buffer when the playhead is inside it, but Chromium can stop a
  // few frames before the hole (seen after an encoder restart with B-frames) and stand still
  // with media buffered just ahead. When the clock has stood for a second and a buffered range
  // starts less than a second ahead, go there.
  skipBufferHoles() {
    const v = this.video;
    const hls = this.hls;
    let last = -1;
    let standing = 0;
    const timer = setInterval(() => {
      if (this.stopped || this.hls !== hls) {
        clearInterval(timer);
        return;
      }
      if (v.paused || v.currentTime !== last) {
        last = v.currentTime;
        standing = 0;
        return;
      }
      standing += 1;
      if (standing < 2) return;
      for (let i = 0; i < v.buffered.length; i += 1) {
        const ahead = v.buffered.start(i) - v.currentTime;
        if (ahead > 0 && ahead < 1) {
          v.currentTime = v.buffered.start(i) + 0.05;
          standing = 0;
          return;
        }
      }
    }, 500);
  }

  async playMjpeg(u) {
    this.protocol = 'mjpeg';
    this.video.style.display = 'none';
    this.img.style.display = 'block';
    this.pictures = 0;
    this.mjpegFailed = null;
    // A multipart stream fires `load` once: new pictures are seen by sampling the image (CORS
    // keeps the canvas readable across nodes).
    this.img.crossOrigin = 'anonymous';
    await new Promise((resolve, reject) => {
      this.img.onload = () => {
        this.setState('live');
        this.sampler = pictureCounter(this.img, () => {
          this.pictures += 1;
        });
        resolve();
      };
      this.img.onerror = () => {
        this.mjpegFailed = 'the picture stream stopped';
        reject(new Error('MJPEG could not be played'));
      };
      this.img.src = u.mjpeg;
    });
  }

  // Resolves when the current playback is lost: WHEP that failed, whose session its node no
  // longer has (asked after 1 s without media: a publisher pause keeps the session, a lost node
  // does not answer) or that decodes nothing for 6 s; HLS with a fatal error or a clock that
  // stands for 8 s; MJPEG whose stream ended. `this.lost` tells a failed node (steer away).
  async watch() {
    let last = -1;
    let stillSince = performance.now();
    let asked = 0;
    let unanswered = 0;
    for (;;) {
      await sleep(500);
      if (this.stopped) return;
      const s = await this.stats();
      const now = performance.now();
      let progress;
      if (this.protocol === 'whep') {
        if (!this.pc || ['failed', 'closed'].includes(this.pc.connectionState)) {
          this.lost = true;
          this.setState('stalled', { reason: 'WebRTC connection lost' });
          return;
        }
        progress = (s.framesDecoded || 0) + (s.audioPackets || 0);
      } else if (this.protocol === 'hls') {
        if (this.hlsFailed) {
          this.lost = !!this.hlsNodeFailed;
          this.setState('stalled', { reason: this.hlsFailed });
          return;
        }
        progress = Math.round(this.video.currentTime * 10);
      } else {
        if (this.mjpegFailed) {
          this.setState('stalled', { reason: this.mjpegFailed });
          return;
        }
        progress = null;
      }
      if (progress === null) continue;
      if (progress !== last) {
        last = progress;
        stillSince = now;
        if (this.state === 'stalled') this.setState('live');
        continue;
      }
      const still = now - stillSince;
      if (still >= 2000 && this.state === 'live') this.setState('stalled', { reason: 'no new media' });
      if (still >= (this.protocol === 'hls' ? 8000 : 6000)) return;
      if (this.protocol === 'whep' && this.resource && still >= 1000 && now - asked >= 1000) {
        asked = now;
        const verdict = await sessionCheck(this.resource);
        unanswered = verdict === 'silent' ? unanswered + 1 : 0;
        // Gone: the node does not know the session (404) or refuses the connection; a check
        // that timed out counts only the second time in a row; anything else (an older node
        // without the check, a proxy's error) leaves it to the 6 s rule.
        if ((verdict === 'gone' || unanswered >= 2) && !this.stopped) {
          this.lost = true;
          this.setState('stalled', { reason: 'the node lost the session' });
          return;
        }
      }
    }
  }

  teardown() {
    if (this.sampler) {
      clearInterval(this.sampler);
      this.sampler = null;
    }
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
    if (this.resource) {
      fetch(this.resource, { method: 'DELETE', keepalive: true }).catch(() => {});
      this.resource = null;
    }
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    this.video.removeAttribute('src');
    this.video.srcObject = null;
    this.img.onerror = null;
    this.img.removeAttribute('src');
  }

  // { protocol, state, bitrateKbps, latencyMs, framesDecoded, pictures, reconnects }
  async stats() {
    const out = {
      protocol: this.protocol,
      state: this.state,
      bitrateKbps: null,
      latencyMs: null,
      framesDecoded: null,
      pictures: this.protocol === 'mjpeg' ? this.pictures : null,
      reconnects: this.reconnects,
    };
    const now = performance.now();
    if (this.protocol === 'whep' && this.pc) {
      let bytes = 0;
      let rtt = null;
      (await this.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp') {
          bytes += s.bytesReceived || 0;
          if (s.kind === 'video') {
            out.framesDecoded = s.framesDecoded || 0;
            if (s.jitterBufferEmittedCount) {
              out.latencyMs = Math.round((1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount);
            }
          } else {
            out.audioPackets = s.packetsReceived || 0;
          }
        }
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime != null) {
          rtt = s.currentRoundTripTime * 1000;
        }
      });
      if (out.latencyMs !== null && rtt !== null) out.latencyMs += Math.round(rtt / 2);
      this.sample(bytes, now, out);
    } else if (this.protocol === 'hls' && this.hls) {
      if (typeof this.hls.latency === 'number' && this.hls.latency > 0) {
        out.latencyMs = Math.round(this.hls.latency * 1000);
      }
      this.sample(this.counters.bytes, now, out);
      const q = this.video.getVideoPlaybackQuality && this.video.getVideoPlaybackQuality();
      if (q) out.framesDecoded = q.totalVideoFrames;
    }
    return out;
  }

  // The bitrate from the byte count `bytes` now and at the previous sample (at least 1 s apart).
  sample(bytes, now, out) {
    const c = this.counters;
    if (c.last === undefined || bytes < c.last) {
      c.last = bytes;
      c.at = now;
    } else if (now - c.at >= 1000) {
      c.bitrateKbps = Math.round(((bytes - c.last) * 8) / (now - c.at));
      c.last = bytes;
      c.at = now;
    }
    out.bitrateKbps = c.bitrateKbps;
  }

  stop() {
    this.stopped = true;
    this.session += 1;
    this.teardown();
    this.video.remove();
    this.img.remove();
  }
}

class Publisher extends Emitter {
  constructor(pc, resource) {
    super();
    this.pc = pc;
    this.resource = resource;
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed') this.emit('error', { reason: 'WebRTC connection failed' });
      if (pc.connectionState === 'disconnected') this.emit('stalled', { reason: 'WebRTC disconnected' });
      if (pc.connectionState === 'connected') this.emit('live', {});
    });
  }

  async stats() {
    let bytes = 0;
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp') bytes += s.bytesSent || 0;
    });
    return { bytesSent: bytes, state: this.pc.connectionState };
  }

  stop() {
    this.pc.getSenders().forEach((s) => s.track && s.track.stop());
    this.pc.close();
    if (this.resource) fetch(this.resource, { method: 'DELETE', keepalive: true }).catch(() => {});
    this.resource = null;
    this.emit('ended', {});
  }
}

// Publishes `stream` (e.g. from getUserMedia) to a WHIP URL (`/whip/<app>/<room>`) with a
// publish token (`canPublish`) or an ingress key.
async function publish(url, token, stream) {
  if (!window.RTCPeerConnection) throw new Error('this browser has no WebRTC');
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) {
    const t = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    // The node relays H.264 (packetization-mode 1) to HLS and WHEP without transcoding.
    if (track.kind === 'video' && window.RTCRtpSender && RTCRtpSender.getCapabilities) {
      const h264 = RTCRtpSender.getCapabilities('video').codecs.filter(
        (c) => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine || ''),
      );
      if (h264.length && t.setCodecPreferences) t.setCodecPreferences(h264);
    }
  }
  try {
    const resource = await negotiate(pc, url, token, 10000);
    return new Publisher(pc, resource);
  } catch (e) {
    pc.close();
    throw e;
  }
}

function play(container, opts) {
  return new Player(container, opts);
}

const StreamHub = { version: VERSION, play, publish, Player, Publisher };
