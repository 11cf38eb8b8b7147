// The page: send an image to /v1/estimate and draw "age ± std, gender p" on each face;
// in live mode, send webcam frames one by one to a /v1/sessions session and draw each
// tracked person's id and fused estimate ("#1 34 (27–45), female 0.93").
// Plain browser JavaScript: no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let photoUrl = null;
let stream = null;
// The live session: its id, whether frames are flowing, the people seen so far.
// inflight: the frame request awaiting its answer (stopping waits for it: a session ended
// under it would answer it 404 and lose that frame)
const live = { id: null, running: false, frames: 0, started: 0, people: new Map(), run: 0, inflight: null };
let modelsLoaded = false;
const LIVE_WIDTH = 640; // frames are sent at most this wide: faster, and enough for faces

function headers() {
  const key = $("api_key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function fmt(value, digits) {
  return Number(value).toFixed(digits);
}

// The label the issue asks for: "age ± std, gender p".
function faceLabel(face) {
  const parts = [];
  if (face.age) parts.push(fmt(face.age.value, 1) + " ± " + fmt(face.age.std, 1));
  if (face.gender) parts.push(face.gender.label + " " + fmt(face.gender.probability, 2));
  return parts.join(", ");
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.status === 401) {
      $("key-row").hidden = false;
      $("models").textContent = "this server needs an API key";
      return;
    }
    const info = await response.json();
    const ids = Object.values(info.heads).flat().map((h) => h.id);  // every model of every task
    const align = info.align !== "none" ? ", align " + info.align : "";
    $("models").textContent =
      "preset " + info.preset + ": " + ids.join(" + ") + ", detector " + info.detector + align;
    const select = $("detector");
    const chosen = select.value;
    select.options[0].textContent = "preset's (" + info.detector + ")";
    while (select.options.length > 1) select.remove(1); // loaded again after a new key
    for (const name of info.detectors) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.appendChild(option);
    }
    if (info.detectors.includes(chosen)) select.value = chosen;
    if (!modelsLoaded) $("tta").checked = info.tta; // the server's default, once: then the user's
    modelsLoaded = true;
  } catch (error) {
    $("models").textContent = "cannot reach the server: " + error;
  }
}

function query() {
  const params = new URLSearchParams();
  if ($("detector").value) params.set("detector", $("detector").value);
  params.set("tta", $("tta").checked ? "true" : "false");
  if ($("min_face").value) params.set("min_face", $("min_face").value);
  if ($("age_threshold").value) params.set("age_threshold", $("age_threshold").value);
  return params.toString();
}

async function send(blob, name) {
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(blob);
  const form = new FormData();
  form.append("image", blob, name);
  setStatus("estimating " + name + " …");
  $("boxes").replaceChildren();
  const started = performance.now();
  let response;
  try {
    response = await fetch("/v1/estimate?" + query(), { method: "POST", body: form, headers: headers() });
  } catch (error) {
    setStatus("request failed: " + error, true);
    return;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401) $("key-row").hidden = false;
    const message = body && body.error ? body.error.message : response.statusText;
    setStatus("error " + response.status + ": " + message, true);
    $("result").hidden = true; // the previous image's table and JSON are not this one's
    return;
  }
  const ms = Math.round(performance.now() - started);
  show(body, ms);
}

function show(result, ms) {
  const img = $("photo");
  $("stage").hidden = false;
  img.onload = () => {
    drawBoxes(result);
    $("result").hidden = false;
  };
  img.onerror = () => {
    // the server read it, the browser cannot show it (HEIC outside Safari): the table alone
    $("stage").hidden = true;
    $("result").hidden = false;
  };
  img.src = photoUrl;
  const n = result.faces.length;
  setStatus(n + (n === 1 ? " face" : " faces") + " in " + result.width + " × " + result.height + " (" + ms + " ms)");
  fillTable(result);
  $("json").textContent = JSON.stringify(result, null, 2);
}

function drawBoxes(result) {
  const layer = $("boxes");
  layer.replaceChildren();
  result.faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.dataset.index = String(i);
    box.style.left = (100 * x1) / result.width + "%";
    box.style.top = (100 * y1) / result.height + "%";
    box.style.width = (100 * (x2 - x1)) / result.width + "%";
    box.style.height = (100 * (y2 - y1)) / result.height + "%";
    if (y1 < 0.06 * result.height) box.classList.add("low"); // no room above: label below
    const label = document.createElement("span");
    label.className = "face-label";
    label.textContent = faceLabel(face);
    box.appendChild(label);
    layer.appendChild(box);
  });
}

function fillTable(result) {
  const body = $("faces").tBodies[0];
  body.replaceChildren();
  const withP = result.faces.some((face) => face.age && face.age.p_at_least);
  const t = withP ? Object.keys(result.faces.find((f) => f.age && f.age.p_at_least).age.p_at_least)[0] : "";
  $("p-head").textContent = "P(age ≥ " + t + ")";
  $("faces").classList.toggle("no-p", !withP);
  result.faces.forEach((face, i) => {
    const age = face.age || {};
    const gender = face.gender || {};
    const pAtLeast = age.p_at_least ? Object.values(age.p_at_least)[0] : null;
    const cells = [
      String(i + 1),
      age.value !== undefined ? fmt(age.value, 1) : "",
      age.std !== undefined ? fmt(age.std, 1) : "",
      age.interval ? fmt(age.interval[0], 0) + "–" + fmt(age.interval[1], 0) : "",
      gender.label || "",
      gender.probability !== undefined ? fmt(gender.probability, 2) : "",
      pAtLeast !== null ? fmt(pAtLeast, 3) : "",
      face.box.map((v) => Math.round(v)).join(", "),
    ];
    const row = document.createElement("tr");
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  });
}

function setupInput() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    const file = $("file").files[0];
    if (file) send(file, file.name);
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) send(file, file.name);
  });
  $("api_key").addEventListener("change", loadModels);
}

function setupWebcam() {
  // Browsers offer the camera only on secure origins (https or localhost).
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return;
  $("webcam").hidden = false;
  $("webcam").addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (error) {
      setStatus("no webcam: " + error.message, true);
      return;
    }
    $("video").srcObject = stream;
    $("live-stage").hidden = false;
    $("snap").hidden = false;
    $("live").hidden = false;
  });
  $("snap").addEventListener("click", () => {
    const canvas = grab($("video"), 0);
    canvas.toBlob((blob) => blob && send(blob, "webcam.jpg"), "image/jpeg", 0.92);
  });
  $("live").addEventListener("click", () => (live.running ? stopLive() : startLive()));
  // A session left open would hold a slot until it expires: end it with the page.
  window.addEventListener("pagehide", () => {
    if (live.id) fetch("/v1/sessions/" + live.id, { method: "DELETE", headers: headers(), keepalive: true });
  });
}

// The video's current frame on a canvas, at most `maxWidth` wide (0: full size).
function grab(video, maxWidth) {
  const scale = maxWidth && video.videoWidth > maxWidth ? maxWidth / video.videoWidth : 1;
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function errorText(response, body) {
  if (response.status === 401) $("key-row").hidden = false;
  const message = body && body.error ? body.error.message : response.statusText;
  return "error " + response.status + ": " + message;
}

// A session request's JSON body, or null once the status line says why there is none.
async function sessionCall(url, method) {
  let response;
  try {
    response = await fetch(url, { method, headers: headers() });
  } catch (error) {
    setStatus("request failed: " + error, true);
    return null;
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    setStatus(errorText(response, body), true);
    return null;
  }
  return body;
}

async function startLive() {
  const params = new URLSearchParams(query());
  const body = await sessionCall("/v1/sessions?" + params, "POST");
  if (!body) return;
  Object.assign(live, { id: body.id, running: true, frames: 0, started: performance.now() });
  live.run += 1; // a loop of an earlier session still awaiting an answer sees it is not its own
  live.people.clear();
  $("live").textContent = "Stop tracking";
  $("live").classList.add("on");
  $("live-title").textContent = "Tracked people (live)";
  $("live-result").hidden = false;
  fillPeople();
  setStatus("tracking: session " + body.id);
  liveLoop();
}

// One frame at a time: the next is grabbed when the answer to this one is in, so a slow
// server drops frames instead of falling behind.
async function liveLoop() {
  const video = $("video");
  const run = live.run;
  const mine = () => live.running && live.run === run;
  while (mine()) {
    if (!video.videoWidth) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    const blob = await new Promise((resolve) => grab(video, LIVE_WIDTH).toBlob(resolve, "image/jpeg", 0.85));
    if (!blob || !mine()) break;
    const form = new FormData();
    form.append("image", blob, "frame.jpg");
    const sent = performance.now();
    let response;
    const request = fetch("/v1/sessions/" + live.id + "/frames", { method: "POST", body: form, headers: headers() });
    const inflight = request.catch(() => null);
    live.inflight = inflight;
    try {
      response = await request;
    } catch (error) {
      setStatus("request failed: " + error, true);
      break;
    } finally {
      if (live.inflight === inflight) live.inflight = null;
    }
    const body = await response.json().catch(() => null);
    if (!mine()) return; // stopped, or another session started: not this loop's to end
    if (!response.ok) {
      setStatus(errorText(response, body), true);
      if (response.status === 404) live.id = null; // expired or ended: nothing to delete
      break;
    }
    live.frames += 1;
    showFrame(body, Math.round(performance.now() - sent));
  }
  if (mine()) stopLive();
}

function trackLabel(face) {
  const parts = ["#" + face.track];
  const age = face.fused && face.fused.age;
  const gender = face.fused && face.fused.gender;
  if (age) parts.push(fmt(age.value, 0) + " (" + fmt(age.interval[0], 0) + "–" + fmt(age.interval[1], 0) + ")");
  if (gender) parts.push(gender.label + " " + fmt(gender.probability, 2));
  return parts.join(" ");
}

function showFrame(frame, ms) {
  const layer = $("live-boxes");
  layer.replaceChildren();
  for (const face of frame.faces) {
    const [x1, y1, x2, y2] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.style.left = (100 * x1) / frame.width + "%";
    box.style.top = (100 * y1) / frame.height + "%";
    box.style.width = (100 * (x2 - x1)) / frame.width + "%";
    box.style.height = (100 * (y2 - y1)) / frame.height + "%";
    if (face.track === null) {
      box.classList.add("pending"); // not yet a person: a few more detections needed
    } else {
      if (!face.detected) box.classList.add("carried");
      if (y1 < 0.08 * frame.height) box.classList.add("low");
      const label = document.createElement("span");
      label.className = "face-label";
      label.textContent = trackLabel(face);
      box.appendChild(label);
      box.dataset.track = String(face.track);
      live.people.set(face.track, { track: face.track, ...face.fused, last: frame.time });
    }
    layer.appendChild(box);
  }
  for (const person of frame.ended) live.people.set(person.track, { ...person, last: person.last_time, ended: true });
  fillPeople();
  const tracked = frame.faces.filter((f) => f.track !== null).length;
  const rate = live.frames / ((performance.now() - live.started) / 1000);
  setStatus(
    "tracking: frame " + frame.frame + ", " + tracked + (tracked === 1 ? " person" : " people") +
      " in view, " + ms + " ms/frame (" + fmt(rate, 1) + " frames/s)",
  );
}

async function stopLive() {
  live.running = false;
  $("live").textContent = "Track live";
  $("live").classList.remove("on");
  $("live-boxes").replaceChildren();
  const id = live.id;
  const run = live.run;
  live.id = null;
  if (!id) return;
  if (live.inflight) {
    setStatus("stopping: waiting for the frame on its way");
    await live.inflight; // its loop sees it is stopped and leaves the frame's answer be
  }
  const body = await sessionCall("/v1/sessions/" + id, "DELETE");
  if (!body || live.run !== run) return; // a new session started meanwhile: its page now
  // The final word: every person the session saw, fused over their whole track.
  live.people.clear();
  for (const person of body.people) live.people.set(person.track, { ...person, last: person.last_time, ended: true });
  $("live-title").textContent = "People seen (" + body.frames + " frames)";
  fillPeople();
  const n = body.people.length;
  setStatus("stopped: " + n + (n === 1 ? " person" : " people") + " in " + body.frames + " frames");
}

function fillPeople() {
  const body = $("people").tBodies[0];
  body.replaceChildren();
  const people = [...live.people.values()].sort((a, b) => a.track - b.track);
  for (const person of people) {
    const age = person.age || {};
    const gender = person.gender || {};
    const cells = [
      "#" + person.track,
      age.value !== undefined ? fmt(age.value, 1) : "",
      age.std !== undefined ? fmt(age.std, 1) : "",
      age.interval ? fmt(age.interval[0], 0) + "–" + fmt(age.interval[1], 0) : "",
      gender.label || "",
      gender.probability !== undefined ? fmt(gender.probability, 2) : "",
      person.frames_seen !== undefined ? String(person.frames_seen) : "",
      person.ended ? "until " + fmt(person.last, 1) + " s" : "now",
    ];
    const row = document.createElement("tr");
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    body.appendChild(row);
  }
}

setupInput();
setupWebcam();
loadModels();
