// voxserve browser client: mic capture (AudioWorklet) -> WebSocket -> events, transcript,
// wakeword indicator, voice changer with a jitter-buffered AudioWorklet player, auto-reconnect.
"use strict";
const $ = (id) => document.getElementById(id);
const state = window.voxState = {
  connected: false, sessionId: null, vadEvents: 0, speaking: false, wakewords: 0, interims: 0, finals: 0,
  finalTexts: [], audioChunks: 0, played: 0, underruns: 0, errors: [], reconnects: 0, latency: {},
};
let ctx = null, mic = null, capture = null, player = null, ws = null;
let wanted = false, backoff = 500, reconnectTimer = null;
// Lossless resume: frames sent (by sequence number) are kept for 10 s so that, after a drop, the
// server can ask for the ones it missed; events carry ids (eid) so replayed ones are not shown twice.
let resumeId = null, resumeToken = "", lastEid = -1, ackedEid = -1, sentSeq = 0;
const replay = [];                       // [seq, ArrayBuffer], at most ~10 s

// Routing key: the same on every reconnect of one stream, so a load balancer (deploy/nginx) brings a resume
// back to the replica that holds the stream; a new key for a new stream.
let route = null;
function wsUrl() {
  const u = new URL(location.href);
  const base = u.searchParams.get("ws") || `${u.protocol === "https:" ? "wss" : "ws"}://${u.host}/v1/stream`;
  if (!resumeId || !route) route = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  return base + (base.includes("?") ? "&" : "?") + "session=" + route;
}
// Credentials: a browser cannot set headers on a WebSocket, so a short-lived token travels as a second
// subprotocol "voxserve.auth.<token>" (the server never echoes it). The token comes from a token URL
// (?token_url= or the field: your backend, POST, returns {"token"}), or is minted by this server's
// POST /v1/tokens from a pasted API key; a fresh one for every connection, so the key never goes on the socket.
async function fetchToken() {
  const u = new URL(location.href);
  const tokenUrl = $("tokenurl").value.trim() || u.searchParams.get("token_url");
  const key = $("apikey").value.trim();
  if (!tokenUrl && !key) return u.searchParams.get("token");          // a token handed to the page, or none
  const r = await fetch(tokenUrl || "/v1/tokens", {
    method: "POST", credentials: tokenUrl ? "include" : "same-origin",
    headers: Object.assign({ "Content-Type": "application/json" }, key && !tokenUrl ? { Authorization: "Bearer " + key } : {}),
    body: JSON.stringify({ pipelines: pipelines() }) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`token request refused (HTTP ${r.status}): ${(body.error && body.error.message) || ""}`);
  return body.token;
}

function pipelines() { return [...document.querySelectorAll("#pipes input:checked")].map((i) => i.value); }
function vcOptions() { return { semitones: parseFloat($("pitch").value), formant: parseFloat($("formant").value) }; }
function showError(msg) { const e = $("error"); e.textContent = msg; e.hidden = !msg; }
function setConn(text, on) { $("conn").textContent = text; $("conn").className = "pill " + (on ? "on" : "off"); }

async function startAudio() {
  ctx = new AudioContext({ latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("capture-worklet.js");
  await ctx.audioWorklet.addModule("playback-worklet.js");
  mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const src = ctx.createMediaStreamSource(mic);
  capture = new AudioWorkletNode(ctx, "capture-processor");
  capture.port.onmessage = (e) => sendPcm(e.data);
  src.connect(capture);
  player = new AudioWorkletNode(ctx, "playback-processor", { processorOptions: { targetMs: 80 }, outputChannelCount: [1] });
  player.port.onmessage = (e) => {
    state.played = e.data.played; state.underruns = e.data.underruns;
    $("buffer").textContent = Math.round(e.data.level / ctx.sampleRate * 1000);
    $("underruns").textContent = e.data.underruns;
  };
  player.connect(ctx.destination);
}

function sendPcm(f32) {
  if (!resumeId) return;                                   // no session yet
  const pcm = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) { const v = Math.max(-1, Math.min(1, f32[i])); pcm[i] = v < 0 ? v * 32768 : v * 32767; }
  replay.push([sentSeq++, pcm.buffer]);
  while (replay.length > 500) replay.shift();
  if (ws && ws.readyState === WebSocket.OPEN && state.sessionId) ws.send(pcm.buffer);
}

async function connect() {
  clearTimeout(reconnectTimer);
  setConn("connecting", false);
  let token = null;
  try { token = await fetchToken(); } catch (err) {
    showError(String(err.message || err)); setConn("no credential", false);
    wanted = false; $("start").disabled = false; $("stop").disabled = true;
    return;
  }
  state.authenticated = Boolean(token);
  ws = new WebSocket(wsUrl(), token ? ["voxserve.v1.msgpack", "voxserve.auth." + token] : ["voxserve.v1.msgpack"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    backoff = 500;
    if (resumeId) {
      ws.send(JSON.stringify({ type: "resume", session_id: resumeId, last_eid: lastEid, resume_token: resumeToken }));
      return;
    }
    ws.send(JSON.stringify({ type: "start", sample_rate: ctx.sampleRate, encoding: "s16le", channels: 1,
      pipelines: pipelines(), options: pipelines().includes("vc") ? { vc: Object.assign({ delivery: "realtime" }, vcOptions()) } : {},
      output_sample_rate: ctx.sampleRate, binary_frames: "pcm", client: "browser" }));
  };
  ws.onmessage = (m) => handle(typeof m.data === "string" ? JSON.parse(m.data) : msgpackDecode(new Uint8Array(m.data)));
  ws.onclose = (e) => {
    state.connected = false; state.sessionId = null;
    setConn(`closed ${e.code}`, false);
    if (e.code === 4401 || e.code === 4403) {          // refused credential or origin: retrying will not help
      wanted = false; $("start").disabled = false; $("stop").disabled = true;
    }
    if (wanted && e.code !== 1000) {                  // automatic reconnect with exponential backoff
      state.reconnects++;
      reconnectTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  };
}

function latencyRow(stage, lat) {
  state.latency[stage] = lat;
  const body = $("latency").tBodies[0];
  let row = body.querySelector(`tr[data-stage="${stage}"]`);
  if (!row) { row = body.insertRow(); row.dataset.stage = stage; for (let i = 0; i < 4; i++) row.insertCell(); row.cells[0].textContent = stage; }
  row.cells[1].textContent = lat.total_ms.toFixed(1);
  row.cells[2].textContent = lat.queue_ms.toFixed(1);
  row.cells[3].textContent = lat.compute_ms.toFixed(1);
}

function handle(ev) {
  if (ev.eid !== undefined) {
    if (ev.eid <= lastEid) return;                      // replayed after a resume: already shown
    lastEid = ev.eid;
    if (lastEid - ackedEid >= 32 && ws && ws.readyState === WebSocket.OPEN) {
      ackedEid = lastEid; ws.send(JSON.stringify({ type: "ack", eid: lastEid }));
    }
  }
  if (ev.latency) latencyRow(ev.type === "transcript" ? "asr final" : ev.type === "transcript_interim" ? "asr interim" : (ev.stage || ev.type), ev.latency);
  switch (ev.type) {
    case "resumed":
      state.connected = true; state.sessionId = ev.session_id; state.resumes = (state.resumes || 0) + 1;
      setConn("streaming (resumed)", true); showError("");
      for (const [seq, buf] of replay) if (seq >= ev.next_seq) ws.send(buf);   // the audio the server missed
      break;
    case "ready":
      resumeId = ev.session_id; resumeToken = ev.resume_token || ""; sentSeq = 0; replay.length = 0;
      state.connected = true; state.sessionId = ev.session_id; showError("");
      setConn("streaming", true); $("session").textContent = "session " + ev.session_id.slice(0, 8);
      break;
    case "vad":
      state.vadEvents++; state.speaking = ev.event === "speech_start";
      $("vad").textContent = state.speaking ? "speech" : "silence"; $("vad").className = "pill " + (state.speaking ? "on" : "off");
      break;
    case "wakeword":
      state.wakewords++;
      $("wake").textContent = `${ev.name} (${ev.score.toFixed(2)})`; $("wake").className = "pill wake";
      setTimeout(() => { $("wake").className = "pill off"; }, 1500);
      break;
    case "transcript_interim": {
      state.interims++;
      const el = $("interim"); el.textContent = "";
      const s = document.createElement("span"); s.className = "stable"; s.textContent = ev.stable_text;
      el.append(s, document.createTextNode((ev.stable_text ? " " : "") + ev.unstable_text));
      break;
    }
    case "transcript": {
      state.finals++; state.finalTexts.push(ev.text);
      const d = document.createElement("div"); d.className = "final"; d.textContent = ev.text;
      $("finals").append(d); $("interim").textContent = "";
      break;
    }
    case "audio": {
      state.audioChunks++; $("chunks").textContent = state.audioChunks;
      if (!$("monitor").checked || !player) break;
      const b = ev.pcm; const i16 = new Int16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
      const f = new Float32Array(i16.length); for (let i = 0; i < i16.length; i++) f[i] = i16[i] / 32768;
      player.port.postMessage(f, [f.buffer]);
      break;
    }
    case "error":
      if (ev.code === "unknown_session") {                 // too late to resume: start a new stream
        resumeId = null; lastEid = -1; ackedEid = -1;
        ws.send(JSON.stringify({ type: "start", sample_rate: ctx.sampleRate, encoding: "s16le", channels: 1,
          pipelines: pipelines(), options: pipelines().includes("vc") ? { vc: Object.assign({ delivery: "realtime" }, vcOptions()) } : {},
          output_sample_rate: ctx.sampleRate, binary_frames: "pcm", client: "browser" }));
        break;
      }
      state.errors.push(ev.code); showError(`${ev.code}: ${ev.message}${ev.fatal ? " (fatal)" : ""}`);
      break;
  }
}

function sendUpdate() {
  $("pitchv").textContent = (parseFloat($("pitch").value) > 0 ? "+" : "") + $("pitch").value;
  $("formantv").textContent = $("formant").value;
  if (ws && ws.readyState === WebSocket.OPEN && state.sessionId && pipelines().includes("vc"))
    ws.send(JSON.stringify({ type: "update", options: { vc: vcOptions() } }));
}
$("pitch").addEventListener("input", sendUpdate);
$("formant").addEventListener("input", sendUpdate);

$("start").onclick = async () => {
  try {
    wanted = true; $("start").disabled = true; $("stop").disabled = false;
    if (!ctx) await startAudio();
    await ctx.resume();
    connect();
  } catch (err) { showError(String(err)); $("start").disabled = false; }
};
$("stop").onclick = () => {
  wanted = false; resumeId = null; lastEid = -1; ackedEid = -1; $("start").disabled = false; $("stop").disabled = true;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" }));
};
// For tests and debugging: drop the connection as a network failure would (the page then resumes).
window.voxDebug = { dropConnection: () => { if (ws) ws.close(4000, "simulated drop"); } };
