// The Live tab of `wav2lip-trt serve`'s page (loaded after app.js, whose helpers it uses): stream an audio file or
// the microphone to an avatar over WS /v1/live and draw the frames as they come, with each frame's latency.

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

$("live-form").addEventListener("submit", startLive);
$("live-stop").addEventListener("click", stopLive);
$("live-file").addEventListener("change", () => { $("live-source-file").checked = true; });
