// The page: send an image to /v1/estimate and draw "age ± std, gender p" on each face.
// Plain browser JavaScript: no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
let photoUrl = null;
let stream = null;

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
    select.options[0].textContent = "preset's (" + info.detector + ")";
    for (const name of info.detectors) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      select.appendChild(option);
    }
    $("tta").checked = info.tta;
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
    return;
  }
  const ms = Math.round(performance.now() - started);
  show(body, ms);
}

function show(result, ms) {
  const img = $("photo");
  img.onload = () => {
    drawBoxes(result);
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
    $("video").hidden = false;
    $("snap").hidden = false;
  });
  $("snap").addEventListener("click", () => {
    const video = $("video");
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => blob && send(blob, "webcam.jpg"), "image/jpeg", 0.92);
  });
}

setupInput();
setupWebcam();
loadModels();
