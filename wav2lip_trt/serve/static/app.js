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
$("token").value = localStorage.getItem("wav2lip-trt-token") || "";
$("token").addEventListener("change", () => { rememberToken(); refreshJobs(); refreshAvatars(); });
readiness();
setInterval(readiness, 5000);
refreshJobs();
refreshAvatars();
