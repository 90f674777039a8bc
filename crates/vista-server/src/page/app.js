// vista's page: search the index, open an image, click to segment it with SAM.
"use strict";
const params = new URLSearchParams(location.search);
if (params.get("key")) sessionStorage.setItem("vista-key", params.get("key"));
const KEY = sessionStorage.getItem("vista-key");
const $ = (id) => document.getElementById(id);
const withKey = (url) => KEY ? url + (url.includes("?") ? "&" : "?") + "key=" + encodeURIComponent(KEY) : url;

async function api(url, body) {
  const init = { headers: {} };
  if (KEY) init.headers["Authorization"] = "Bearer " + KEY;
  if (body !== undefined) { init.method = "POST"; init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(url, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

function showResults(results, label) {
  const grid = $("grid");
  grid.replaceChildren();
  $("hint").hidden = true;
  $("status").textContent = results.length + " results" + (label ? " for " + label : "");
  for (const r of results) {
    const b = document.createElement("button");
    b.className = "cell"; b.setAttribute("role", "listitem");
    b.title = r.path + " (" + r.score.toFixed(3) + ")";
    b.dataset.id = r.id;
    const img = document.createElement("img");
    img.loading = "lazy"; img.alt = r.path.split("/").pop();
    img.src = withKey("/v1/thumb/" + r.id + "?size=256");
    const s = document.createElement("span");
    s.className = "score"; s.textContent = r.score.toFixed(3);
    b.append(img, s);
    b.addEventListener("click", () => openViewer(r.id, r.path));
    grid.append(b);
  }
}

let searchSeq = 0;  // only the latest search may fill the grid
async function search(q, image) {
  const u = new URLSearchParams();
  if (q) u.set("q", q);
  if (image) u.set("image", image);
  const seq = ++searchSeq;
  $("status").textContent = "searching…";
  try {
    const data = await api("/v1/search?" + u.toString());
    if (seq === searchSeq) showResults(data.results, q || "this image");
  } catch (e) { if (seq === searchSeq) $("status").textContent = e.message; }
}

// Near-duplicate groups: one row per group, largest first.
$("dupes").addEventListener("click", async () => {
  ++searchSeq;  // a search still on its way must not replace the groups
  $("status").textContent = "finding near-duplicates…";
  try {
    const data = await api("/v1/dupes");
    const grid = $("grid");
    grid.replaceChildren();
    $("hint").hidden = true;
    $("status").textContent = data.groups.length + " groups of near-duplicates (cosine ≥ " + data.threshold + ")";
    data.groups.forEach((g, k) => {
      const h = document.createElement("h3");
      h.className = "group"; h.textContent = "Group " + (k + 1) + ": " + g.length + " photos";
      grid.append(h);
      for (const p of g) {
        const b = document.createElement("button");
        b.className = "cell"; b.title = p.path; b.dataset.id = p.id;
        const img = document.createElement("img");
        img.loading = "lazy"; img.alt = p.path.split("/").pop(); img.src = withKey("/v1/thumb/" + p.id + "?size=256");
        b.append(img);
        b.addEventListener("click", () => openViewer(p.id, p.path));
        grid.append(b);
      }
    });
  } catch (e) { $("status").textContent = e.message; }
});

$("search").addEventListener("submit", (ev) => { ev.preventDefault(); const q = $("q").value.trim(); if (q) search(q); });
// Live results: search as you type, once the typing pauses.
let typing = null;
$("q").addEventListener("input", () => {
  clearTimeout(typing);
  const q = $("q").value.trim();
  if (q.length >= 3) typing = setTimeout(() => search(q), 350);
});

// --- viewer and segmentation ---
let current = null;      // { id, path }
let points = [];         // [x, y, label] in image pixels
let box = null;          // [x0, y0, x1, y1]
let drag = null;
let masks = [];          // from /v1/segment

function openViewer(id, path) {
  current = { id, path }; points = []; box = null; masks = [];
  $("photo").src = withKey("/v1/images/" + id);
  $("photo").alt = path;
  $("viewer").hidden = false;
  $("vstatus").textContent = "Click an object: click adds a point, shift-click or right-click a background point, drag a box.";
  $("overlay").focus();
}
function closeViewer() { $("viewer").hidden = true; current = null; }
$("close").addEventListener("click", closeViewer);
$("like").addEventListener("click", () => { if (current) { const id = current.id; closeViewer(); search("", id); } });
$("clear").addEventListener("click", () => { points = []; box = null; masks = []; draw(); });

function toImage(ev) {
  const c = $("overlay").getBoundingClientRect(), img = $("photo");
  return [(ev.clientX - c.left) * img.naturalWidth / c.width, (ev.clientY - c.top) * img.naturalHeight / c.height];
}

const overlay = $("overlay");
overlay.addEventListener("contextmenu", (ev) => ev.preventDefault());
overlay.addEventListener("pointerdown", (ev) => { drag = { start: toImage(ev), button: ev.button, shift: ev.shiftKey, moved: false }; });
overlay.addEventListener("pointermove", (ev) => {
  if (!drag) return;
  const p = toImage(ev), s = drag.start;
  if (Math.abs(p[0] - s[0]) + Math.abs(p[1] - s[1]) > 8) {
    drag.moved = true;
    box = [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])];
    draw();
  }
});
overlay.addEventListener("pointerup", (ev) => {
  if (!drag) return;
  const d = drag; drag = null;
  if (!d.moved) points.push([d.start[0], d.start[1], (d.button === 2 || d.shift) ? 0 : 1]);
  segment();
});

async function segment() {
  if (!current || (!points.length && !box)) return;
  $("vstatus").textContent = "segmenting…";
  const t = performance.now();
  try {
    const body = { id: current.id, points };
    if (box) body.boxes = [box];
    const data = await api("/v1/segment", body);
    masks = data.masks;
    $("vstatus").textContent = "score " + masks[0].score.toFixed(3) + ", " + masks[0].area + " px, " +
      Math.round(performance.now() - t) + " ms" + (data.cached ? " (embedding reused)" : "");
  } catch (e) { $("vstatus").textContent = e.message; }
  draw();
}

function draw() {
  const c = overlay, img = $("photo");
  c.width = img.naturalWidth || 1; c.height = img.naturalHeight || 1;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const finish = () => {
    g.lineWidth = Math.max(2, c.width / 400);
    if (box) { g.strokeStyle = "#3af"; g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]); }
    const r = Math.max(4, c.width / 150);
    for (const p of points) {
      g.beginPath(); g.arc(p[0], p[1], r, 0, 2 * Math.PI);
      g.fillStyle = p[2] ? "#2c5" : "#e33"; g.fill(); g.strokeStyle = "#fff"; g.stroke();
    }
  };
  if (!masks.length) { finish(); return; }
  const m = new Image();
  m.onload = () => {
    const off = document.createElement("canvas");
    off.width = c.width; off.height = c.height;
    const o = off.getContext("2d");
    o.drawImage(m, 0, 0, c.width, c.height);
    const px = o.getImageData(0, 0, c.width, c.height);
    for (let i = 0; i < px.data.length; i += 4) {
      const on = px.data[i] > 127;
      px.data[i] = 30; px.data[i + 1] = 144; px.data[i + 2] = 255; px.data[i + 3] = on ? 120 : 0;
    }
    g.putImageData(px, 0, 0);
    finish();
  };
  m.src = "data:image/png;base64," + masks[0].png;
}
$("photo").addEventListener("load", draw);

function download(name, href) { const a = document.createElement("a"); a.href = href; a.download = name; a.click(); }
$("png").addEventListener("click", () => { if (masks.length) download("mask.png", "data:image/png;base64," + masks[0].png); });
$("coco").addEventListener("click", () => {
  if (!masks.length || !current) return;
  const m = masks[0];
  const doc = { image: current.path, segmentation: m.rle, bbox: m.bbox, area: m.area, predicted_iou: m.score, point_coords: points };
  download("mask.json", "data:application/json," + encodeURIComponent(JSON.stringify(doc)));
});

document.addEventListener("keydown", (ev) => {
  if (ev.target === $("q")) return;
  if (ev.key === "/") { ev.preventDefault(); $("q").focus(); }
  else if (ev.key === "Escape" && !$("viewer").hidden) closeViewer();
  else if (ev.key === "c" && !$("viewer").hidden) $("clear").click();
  else if (ev.key === "m" && !$("viewer").hidden) $("like").click();
});

// A link can carry a search (?q=...) or an image to open (?view=ID).
if (params.get("q")) { $("q").value = params.get("q"); search(params.get("q")); }
if (params.get("view")) openViewer(params.get("view"), params.get("view"));

// The server's state; while it indexes in the background, progress every second.
function health() {
  api("/health").then((h) => {
    const ix = h.indexing;
    let text = h.images + " images indexed";
    if (ix && ix.running) text = "indexing: " + ix.embedded + " of " + ix.to_embed + " new images embedded (search covers " + h.images + ")";
    else if (ix && ix.error) text += " (indexing stopped: " + ix.error + ")";
    if (!h.sam) text += " · no SAM model: segmentation is off";
    if (!$("grid").children.length || (ix && ix.running)) $("status").textContent = text;
    if (ix && ix.running) setTimeout(health, 1000);
  }).catch((e) => { $("status").textContent = e.message; });
}
health();
