// The page of `wav2lip-trt serve`. Jobs: upload (or pick an avatar), follow the job's events, play the result,
// list recent jobs. Avatars: prepare a face once, list them. Live: stream a file or the microphone to an avatar
// over the WebSocket and draw the frames as they come, with the latency each frame's header reports.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the job shown in the progress panel
let events = null;    // its EventSource

function token() { return $("token").value.trim() || localStorage.getItem("wav2lip-trt-token") || ""; }
function headers() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }
function withToken(url) { const t = token(); return t ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t) : url; }
function rememberToken() { if ($("token").value.trim()) localStorage.setItem("wav2lip-trt-token", $("token").value.trim()); }
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

function showError(message) {
  const box = $("error");
  box.textContent = message ? "Error: " + message : "";
  box.hidden = !message;
}

async function api(method, url, body) {
  const response = await fetch(url, { method, body, headers: headers() });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || response.status + " " + response.statusText;
    if (response.status === 429) throw new Error(message + " (retry after " + response.headers.get("Retry-After") + " s)");
    throw new Error(message);
  }
  return data;
}

function numbers(text, count, name) {
  const parts = text.trim().split(/[\s,]+/).filter(Boolean).map(Number);
  if (parts.length !== count || parts.some((n) => !Number.isInteger(n))) throw new Error(name + ": give " + count + " whole numbers");
  return parts;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

// A row of the jobs or avatars table (when, what, status), appended; its details cell is returned.
function listRow(body, item, name, details) {
  const row = document.createElement("tr");
  row.dataset.id = item.id;
  cell(row, new Date(item.created * 1000).toLocaleString());
  cell(row, name);
  cell(row, item.status, "status-" + item.status);
  body.appendChild(row);
  return cell(row, details);
}

function link(text, href, onclick) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (onclick) a.onclick = (e) => { e.preventDefault(); onclick(); };
  return a;
}

// ---- tabs

const TABS = ["jobs", "avatars", "live"];

function showTab(name) {
  if (!TABS.includes(name)) name = "jobs";
  showError("");  // the error of another tab's action
  for (const tab of TABS) {
    $("tab-" + tab).hidden = tab !== name;
    $("tab-button-" + tab).setAttribute("aria-selected", String(tab === name));
  }
}

// ---- jobs

function faceOptions(prefix) {
  const o = {};
  if ($(prefix + "box").value.trim()) o.box = numbers($(prefix + "box").value, 4, "box");
  if ($(prefix + "pads").value.trim()) o.pads = numbers($(prefix + "pads").value, 4, "pads");
  if ($(prefix + "nosmooth").checked) o.nosmooth = true;
  if ($(prefix + "static").checked) o.static = true;
  return o;
}

function options(avatar) {
  const o = avatar ? {} : faceOptions("");
  if ($("blend").value) o.blend = $("blend").value;
  if ($("crf").value) o.crf = Number($("crf").value);
  return o;
}

function avatarPicked() {
  const avatar = $("job-avatar").value;
  for (const id of ["face", "box", "pads", "nosmooth", "static"]) $(id).disabled = Boolean(avatar);
}

// A form's POST: the multipart body from fill(form), the button disabled meanwhile, errors to the error area.
async function post(event, button, url, fill, refresh) {
  event.preventDefault();
  showError("");
  rememberToken();
  try {
    const form = new FormData();
    fill(form);
    $(button).disabled = true;
    return await api("POST", url, form);
  } catch (e) {
    showError(e.message);
    return null;
  } finally {
    $(button).disabled = false;
    refresh();
  }
}

async function submit(event) {
  const job = await post(event, "submit", "/v1/jobs", (form) => {
    const avatar = $("job-avatar").value;
    if (avatar) form.append("avatar", avatar);
    else if ($("face").files[0]) form.append("face", $("face").files[0]);
    else throw new Error("choose a face, or pick an avatar");
    form.append("audio", $("audio").files[0]);
    form.append("options", JSON.stringify(options(avatar)));
  }, refreshJobs);
  if (job) follow(job);
}

function follow(job) {
  current = job.id;
  if (events) events.close();
  $("current").hidden = false;
  $("job-id").textContent = job.id;
  $("result").hidden = true;
  $("video").removeAttribute("src");
  $("cancel").hidden = false;
  $("bar").value = 0;
  $("bar").removeAttribute("data-frames");
  $("frames").textContent = "";
  $("eta").textContent = "";
  $("phase").textContent = job.status;
  events = new EventSource(withToken("/v1/jobs/" + job.id + "/events"));
  events.addEventListener("status", (e) => { $("phase").textContent = JSON.parse(e.data).status; });
  events.addEventListener("progress", (e) => progress(JSON.parse(e.data)));
  events.addEventListener("end", (e) => { events.close(); events = null; finished(JSON.parse(e.data)); });
  events.onerror = () => { if (events && events.readyState === EventSource.CLOSED) showError("lost the job's event stream"); };
}

function progress(p) {
  if (p.phase) $("phase").textContent = p.phase;
  if (p.frames_total) {
    $("bar").max = p.frames_total;
    $("bar").value = p.frames_done;
    $("bar").dataset.frames = p.frames_done;
    $("frames").textContent = p.frames_done + " / " + p.frames_total + " frames";
  }
  $("eta").textContent = p.eta_seconds != null ? "about " + Math.ceil(p.eta_seconds) + " s left" : "";
}

function finished(job) {
  $("cancel").hidden = true;
  $("eta").textContent = "";
  $("phase").textContent = job.status;
  if (job.status === "succeeded") {
    $("bar").value = $("bar").max;
    $("result").hidden = false;
    $("video").src = withToken(job.result);
    $("download").href = withToken(job.result + "?download=true");
  } else if (job.status === "failed") {
    showError(job.error);
  }
  refreshJobs();
}

async function cancel() {
  if (!current) return;
  try { await api("DELETE", "/v1/jobs/" + current); } catch (e) { showError(e.message); }
}

function jobFiles(job) {
  const files = job.files || {};
  const avatar = job.options && job.options.avatar;
  const face = avatar ? "avatar " + avatar : files.face || "";
  return face + " + " + (files.audio || "");
}

async function refreshJobs() {
  let page;
  try { page = await api("GET", "/v1/jobs?limit=20"); } catch (e) { return; }
  const body = $("jobs");
  body.replaceChildren();
  for (const job of page.jobs) {
    const details = listRow(body, job, jobFiles(job), job.error || "");
    if (job.status === "succeeded") {
      details.appendChild(link("video", withToken(job.result)));
      if (job.report) details.append(" " + job.report.frames + " frames in " + job.report.seconds + " s");
    } else if (job.status === "queued" || job.status === "running") {
      details.appendChild(link("follow", "#", () => follow(job)));
    }
  }
}

// ---- avatars

let avatarPoll = null;  // the timer that refreshes the list while an avatar is being prepared

function submitAvatar(event) {
  post(event, "avatar-submit", "/v1/avatars", (form) => {
    form.append("face", $("avatar-face").files[0]);
    form.append("options", JSON.stringify({ ...faceOptions("avatar-"), loop: $("avatar-loop").value }));
  }, refreshAvatars);
}

function avatarName(avatar) {
  const face = avatar.files && avatar.files.face;
  return face ? face + " (" + avatar.id + ")" : avatar.id;
}

function avatarDetails(avatar) {
  if (avatar.status === "failed") return avatar.error || "";
  if (avatar.status !== "succeeded") return avatar.phase && avatar.phase !== avatar.status ? avatar.phase : "";
  return avatar.width + "×" + avatar.height + ", " + avatar.frames + " frames at " + avatar.fps + " fps, loop "
    + avatar.loop;
}

async function deleteAvatar(id) {
  try { await api("DELETE", "/v1/avatars/" + id); } catch (e) { showError(e.message); }
  refreshAvatars();
}

function fillAvatarChoices(avatars) {
  for (const select of document.querySelectorAll(".avatar-choice")) {
    const chosen = select.value;
    const first = select.options[0];
    select.replaceChildren(first);
    for (const avatar of avatars.filter((a) => a.status === "succeeded")) {
      const option = new Option(avatarName(avatar), avatar.id);
      option.selected = avatar.id === chosen;
      select.appendChild(option);
    }
  }
  avatarPicked();
}

async function refreshAvatars() {
  clearTimeout(avatarPoll);
  let page;
  try { page = await api("GET", "/v1/avatars?limit=50"); } catch (e) { return; }
  const body = $("avatars");
  body.replaceChildren();
  for (const avatar of page.avatars) {
    const details = listRow(body, avatar, avatarName(avatar), avatarDetails(avatar) + " ");
    if (avatar.status === "succeeded" || avatar.status === "failed") {
      details.appendChild(link("delete", "#", () => deleteAvatar(avatar.id)));
    }
  }
  fillAvatarChoices(page.avatars);
  const preparing = page.avatars.some((a) => a.status === "queued" || a.status === "running");
  if (preparing) avatarPoll = setTimeout(refreshAvatars, 1000);
}

// ---- live

const RATE = 16000;           // what the server takes without resampling
const CHUNK = RATE / 5;       // 200 ms of samples per message
let live = null;              // the running session

// Runs in the audio thread: the microphone's channels averaged and brought down to 16 kHz (each output sample the
// mean of the input samples it covers), posted in 200 ms blocks; any message asks for the rest, posted as {last}.
const CAPTURE = `registerProcessor("capture", class extends AudioWorkletProcessor {
  constructor() { super(); this.step = sampleRate / ${RATE}; this.phase = 0; this.sum = 0; this.count = 0;
                  this.out = new Float32Array(${CHUNK}); this.filled = 0;
                  this.port.onmessage = () => this.port.postMessage({ last: this.out.slice(0, this.filled) }); }
  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true;
    for (let i = 0; i < channels[0].length; i++) {
      let x = 0;
      for (const c of channels) x += c[i];
      this.sum += x / channels.length; this.count += 1; this.phase += 1;
      if (this.phase >= this.step) {
        this.phase -= this.step; this.out[this.filled++] = this.sum / this.count; this.sum = 0; this.count = 0;
        if (this.filled === this.out.length) { this.port.postMessage(this.out, [this.out.buffer]);
                                               this.out = new Float32Array(${CHUNK}); this.filled = 0; }
      }
    }
    return true;
  }
});`;

async function decodeFile(file) {
  let decoded;
  try {
    decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await file.arrayBuffer());
  } catch (e) {
    throw new Error(file.name + ": the browser cannot decode it as audio (" + e.message + ")");
  }
  if (!decoded.length) throw new Error(file.name + ": no audio in it");
  const mono = new OfflineAudioContext(1, decoded.length, RATE);  // decoded at 16 kHz already; this mixes it down
  const source = mono.createBufferSource();
  source.buffer = decoded;
  source.connect(mono.destination);
  source.start();
  return (await mono.startRendering()).getChannelData(0);
}

function s16le(samples) {
  const out = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    out.setInt16(2 * i, Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768))), true);
  }
  return out.buffer;
}

async function openMicrophone() {
  if (!navigator.mediaDevices) throw new Error("the microphone needs the page on https or localhost");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (e) {
    throw new Error("the microphone: " + e.message);
  }
  const context = new AudioContext();
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([CAPTURE], { type: "text/javascript" })));
  return { stream, context };
}

function setLiveState(text) { $("live-state").textContent = text; }

function liveURL(avatar, clock) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const query = "?avatar=" + encodeURIComponent(avatar) + "&rate=" + RATE + "&clock=" + clock;
  return withToken(scheme + location.host + "/v1/live" + query);
}

function resetLive() {
  for (const id of ["live-fps", "live-latency-p50", "live-latency-last"]) $(id).textContent = "–";
  $("live-frames").textContent = "0";
  $("live-sent").textContent = "0.00";
  $("live-end").hidden = true;
  const canvas = $("live-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.index;
}

async function startLive(event) {
  event.preventDefault();
  showError("");
  rememberToken();
  if (live) return;
  const avatar = $("live-avatar").value;
  const fromMic = $("live-source-mic").checked;
  const file = $("live-file").files[0];
  if (!avatar) { showError("pick a ready avatar (prepare one in the Avatars tab)"); return; }
  if (!fromMic && !file) { showError("choose an audio file, or the microphone"); return; }
  const session = { samples: null, mic: null, ws: null, closing: false, ended: false, failed: false, sent: 0,
                    frames: 0, drawn: -1, latencies: [], arrivals: [] };
  live = session;
  $("live-start").disabled = true;
  resetLive();
  try {
    setLiveState(fromMic ? "opening the microphone…" : "decoding " + file.name + "…");
    if (fromMic) session.mic = await openMicrophone();
    else session.samples = await decodeFile(file);
  } catch (e) {
    liveOver(session);
    setLiveState("idle");
    showError(e.message);
    return;
  }
  setLiveState("connecting…");
  const ws = new WebSocket(liveURL(avatar, $("live-clock").value));
  ws.binaryType = "arraybuffer";
  session.ws = ws;
  ws.onmessage = (m) => {
    if (typeof m.data === "string") liveMessage(session, JSON.parse(m.data));
    else liveFrame(session, m.data);
  };
  ws.onclose = (e) => liveClosed(session, e);
  $("live-stop").disabled = false;
}

function liveMessage(session, message) {
  if (message.type === "ready") {
    const canvas = $("live-canvas");
    canvas.width = message.width;
    canvas.height = message.height;
    setLiveState("streaming at " + message.fps + " fps");
    if (session.mic) streamMicrophone(session);
    else streamFile(session, $("live-fast").checked);
  } else if (message.type === "end") {
    session.ended = true;
    showReport(message.report || {});
  } else if (message.type === "error") {
    session.failed = true;
    showError(message.error);
  }
}

function sendAudio(session, samples) {
  if (session.closing || session.ws.readyState !== WebSocket.OPEN) return;
  session.ws.send(s16le(samples));
  session.sent += samples.length;
  $("live-sent").textContent = (session.sent / RATE).toFixed(2);
}

function endAudio(session) {
  if (session.closing) return;
  session.closing = true;
  stopMicrophone(session);
  if (session.ws && session.ws.readyState === WebSocket.OPEN) {
    session.ws.send(JSON.stringify({ type: "close" }));
    setLiveState("finishing…");
  }
}

async function streamFile(session, fast) {
  const samples = session.samples;
  const start = performance.now();
  for (let k = 0; k * CHUNK < samples.length && !session.closing; k++) {
    const end = Math.min(samples.length, (k + 1) * CHUNK);
    if (!fast) await sleep(start + (end / RATE) * 1000 - performance.now());  // sent once it has been spoken
    sendAudio(session, samples.subarray(k * CHUNK, end));
  }
  endAudio(session);
}

function streamMicrophone(session) {
  const { context, stream } = session.mic;
  const node = new AudioWorkletNode(context, "capture", { numberOfOutputs: 0 });
  node.port.onmessage = (e) => {
    if (e.data instanceof Float32Array) { sendAudio(session, e.data); return; }
    sendAudio(session, e.data.last);
    endAudio(session);
  };
  context.createMediaStreamSource(stream).connect(node);
  context.resume();
  session.mic.node = node;
}

function stopLive() {
  const session = live;
  if (!session) return;
  $("live-stop").disabled = true;
  if (!session.mic || !session.mic.node) { endAudio(session); return; }
  session.mic.node.port.postMessage("rest");  // what was said since the last 200 ms block, then the end
  setTimeout(() => endAudio(session), 500);
}

function stopMicrophone(session) {
  if (!session.mic) return;
  session.mic.stream.getTracks().forEach((track) => track.stop());
  session.mic.context.close();
  session.mic = null;
}

function insertSorted(values, x) {
  let lo = 0, hi = values.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (values[mid] < x) lo = mid + 1; else hi = mid; }
  values.splice(lo, 0, x);
}

function liveFrame(session, buffer) {
  const size = new DataView(buffer).getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, size)));
  const jpeg = new Blob([new Uint8Array(buffer, 4 + size)], { type: "image/jpeg" });
  const now = performance.now();
  session.frames += 1;
  session.arrivals.push(now);
  if (session.arrivals.length > 50) session.arrivals.shift();
  $("live-frames").textContent = session.frames;
  if (session.arrivals.length > 1) {
    const seconds = (now - session.arrivals[0]) / 1000;
    $("live-fps").textContent = ((session.arrivals.length - 1) / seconds).toFixed(1);
  }
  if (header.latency_ms != null) {
    insertSorted(session.latencies, header.latency_ms);
    $("live-latency-last").textContent = Math.round(header.latency_ms);
    $("live-latency-p50").textContent = Math.round(session.latencies[(session.latencies.length - 1) >> 1]);
  }
  createImageBitmap(jpeg).then((bitmap) => {
    if (header.index > session.drawn) {  // decoding can finish out of order: never draw an older frame
      session.drawn = header.index;
      const canvas = $("live-canvas");
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      canvas.dataset.index = header.index;
    }
    bitmap.close();
  }, () => showError("frame " + header.index + ": the browser cannot decode its JPEG"));
}

function showReport(report) {
  const latency = report.latency_ms || {};
  $("live-summary").textContent = report.frames + " frames from " + report.audio_seconds + " s of audio in "
    + report.seconds + " s (" + report.frames_per_second + " fps); latency p50 " + latency.p50 + " ms, p95 "
    + latency.p95 + " ms; dropped " + report.dropped + ", gaps " + report.gaps;
  $("live-report").textContent = JSON.stringify(report, null, 2);
  $("live-end").hidden = false;
}

function liveClosed(session, event) {
  liveOver(session);
  if (session.ended) setLiveState("finished");
  else if (session.failed) setLiveState("failed");
  else {
    setLiveState("closed");
    const reason = event.reason ? ": " + event.reason : "";
    showError("the live connection closed before the end (code " + event.code + reason + ")"
      + (event.code === 1006 ? "; is the server up, and the token right?" : ""));
  }
}

function liveOver(session) {
  session.closing = true;
  stopMicrophone(session);
  if (live === session) live = null;
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
}

// ---- start

async function readiness() {
  try {
    const r = await (await fetch("/readyz")).json();
    $("ready").textContent = r.ready ? r.workers_ready + " of " + r.workers + " workers ready" : (r.error || "loading models…");
  } catch (e) {
    $("ready").textContent = "server unreachable";
  }
}

for (const button of document.querySelectorAll("[data-tab]")) {
  button.addEventListener("click", () => { location.hash = button.dataset.tab; });
}
window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
showTab(location.hash.slice(1));
$("job-form").addEventListener("submit", submit);
$("job-avatar").addEventListener("change", avatarPicked);
$("cancel").addEventListener("click", cancel);
$("avatar-form").addEventListener("submit", submitAvatar);
$("live-form").addEventListener("submit", startLive);
$("live-stop").addEventListener("click", stopLive);
$("live-file").addEventListener("change", () => { $("live-source-file").checked = true; });
$("token").value = localStorage.getItem("wav2lip-trt-token") || "";
$("token").addEventListener("change", () => { rememberToken(); refreshJobs(); refreshAvatars(); });
readiness();
setInterval(readiness, 5000);
refreshJobs();
refreshAvatars();
