// The page of `wav2lip-trt serve`: upload, follow the job's events, play the result, list recent jobs.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the job shown in the progress panel
let events = null;    // its EventSource

function token() { return $("token").value.trim() || localStorage.getItem("wav2lip-trt-token") || ""; }
function headers() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }
function withToken(url) { const t = token(); return t ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t) : url; }

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

function options() {
  const o = {};
  if ($("box").value.trim()) o.box = numbers($("box").value, 4, "box");
  if ($("pads").value.trim()) o.pads = numbers($("pads").value, 4, "pads");
  if ($("blend").value) o.blend = $("blend").value;
  if ($("crf").value) o.crf = Number($("crf").value);
  if ($("nosmooth").checked) o.nosmooth = true;
  if ($("static").checked) o.static = true;
  return o;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if ($("token").value.trim()) localStorage.setItem("wav2lip-trt-token", $("token").value.trim());
  const form = new FormData();
  try {
    form.append("face", $("face").files[0]);
    form.append("audio", $("audio").files[0]);
    form.append("options", JSON.stringify(options()));
    $("submit").disabled = true;
    const job = await api("POST", "/v1/jobs", form);
    follow(job);
  } catch (e) {
    showError(e.message);
  } finally {
    $("submit").disabled = false;
    refreshJobs();
  }
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

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function refreshJobs() {
  let page;
  try { page = await api("GET", "/v1/jobs?limit=20"); } catch (e) { return; }
  const body = $("jobs");
  body.replaceChildren();
  for (const job of page.jobs) {
    const row = document.createElement("tr");
    cell(row, new Date(job.created * 1000).toLocaleString());
    cell(row, (job.files.face || "") + " + " + (job.files.audio || ""));
    cell(row, job.status, "status-" + job.status);
    const details = cell(row, job.error || "");
    if (job.status === "succeeded") {
      const link = document.createElement("a");
      link.href = withToken(job.result);
      link.textContent = "video";
      details.appendChild(link);
      if (job.report) details.append(" " + job.report.frames + " frames in " + job.report.seconds + " s");
    } else if (job.status === "queued" || job.status === "running") {
      const link = document.createElement("a");
      link.href = "#";
      link.textContent = "follow";
      link.onclick = (e) => { e.preventDefault(); follow(job); };
      details.appendChild(link);
    }
    body.appendChild(row);
  }
}

async function readiness() {
  try {
    const r = await (await fetch("/readyz")).json();
    $("ready").textContent = r.ready ? r.workers_ready + " of " + r.workers + " workers ready" : (r.error || "loading models…");
  } catch (e) {
    $("ready").textContent = "server unreachable";
  }
}

$("job-form").addEventListener("submit", submit);
$("cancel").addEventListener("click", cancel);
$("token").value = localStorage.getItem("wav2lip-trt-token") || "";
readiness();
setInterval(readiness, 5000);
refreshJobs();
