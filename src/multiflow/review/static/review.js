// multiflow review: the small amount of behaviour the server-rendered pages need (no libraries).
"use strict";

function pageData() {
  const el = document.getElementById("page-data");
  return el ? JSON.parse(el.textContent) : {};
}

// State-changing requests carry the session token of the page (security.py) and are JSON.
async function postJSON(url, body) {
  const token = document.querySelector('meta[name="review-token"]').content;
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-Review-Token": token },
                               body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.detail || r.statusText);
  return data;
}

function objectPage() {
  const data = pageData();
  const opacity = document.getElementById("opacity");
  const setOpacity = () => document.querySelectorAll("img.heat").forEach(
    (img) => { img.style.opacity = opacity.value / 100; });
  opacity.addEventListener("input", setOpacity);
  setOpacity();
  const gt = document.getElementById("gt-toggle");
  gt.addEventListener("change", () => document.body.classList.toggle("hide-gt", !gt.checked));
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select") || e.altKey || e.ctrlKey || e.metaKey) return;
    if ((e.key === "ArrowRight" || e.key === "j") && data.next) window.location.href = data.next;
    if ((e.key === "ArrowLeft" || e.key === "k") && data.prev) window.location.href = data.prev;
  });
  const form = document.getElementById("label-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const status = document.getElementById("label-status");
    if (!f.get("label")) { status.textContent = "choose a label"; return; }
    try {
      const res = await postJSON(`/api/${encodeURIComponent(form.dataset.class)}/label`, {
        index: Number(form.dataset.index), label: f.get("label"), note: f.get("note"), who: f.get("who") });
      document.getElementById("current-label").textContent = res.text;
      const li = document.createElement("li");
      li.textContent = `${res.stored.at} ${res.stored.who}: ${res.text} ${res.stored.note}`;
      document.getElementById("label-history").prepend(li);
      status.textContent = "saved";
    } catch (err) { status.textContent = "not saved: " + err.message; }
  });
}

// Live counts at threshold t: an object is NG when its score is strictly above t.
function counts(normal, anomalous, t) {
  const fp = normal.filter((s) => s > t).length, tp = anomalous.filter((s) => s > t).length;
  return { fp, tn: normal.length - fp, tp, fn: anomalous.length - tp,
           fpr: normal.length ? fp / normal.length : null, tpr: anomalous.length ? tp / anomalous.length : null };
}

function rocPoints(normal, anomalous) {
  const all = [...new Set(normal.concat(anomalous))].sort((a, b) => b - a);
  const pts = [[0, 0]];
  for (const t of all) { const c = counts(normal, anomalous, t - 1e-12 * Math.max(1, Math.abs(t)));
                         pts.push([c.fpr ?? 0, c.tpr ?? 0]); }
  pts.push([1, 1]);
  return pts;
}

function thresholdPage() {
  const d = pageData();
  const range = document.getElementById("t-range"), num = document.getElementById("t-value");
  const hist = document.getElementById("hist"), roc = document.getElementById("roc");
  const lo = Number(range.min), hi = Number(range.max), bins = 40;
  const binOf = (s) => Math.min(bins - 1, Math.max(0, Math.floor((s - lo) / (hi - lo) * bins)));
  const hN = new Array(bins).fill(0), hA = new Array(bins).fill(0);
  d.normal.forEach((s) => hN[binOf(s)]++); d.anomalous.forEach((s) => hA[binOf(s)]++);
  const top = Math.max(1, ...hN, ...hA);
  const roc_pts = rocPoints(d.normal, d.anomalous);
  const fmt = (x) => (x === null ? "-" : x.toFixed(3));

  function draw(t) {
    const g = hist.getContext("2d"), W = hist.width, H = hist.height - 20;
    g.clearRect(0, 0, W, hist.height);
    const bw = W / bins;
    for (let i = 0; i < bins; i++) {
      g.fillStyle = "rgba(30,120,220,0.55)"; g.fillRect(i * bw, H - H * hN[i] / top, bw - 1, H * hN[i] / top);
      g.fillStyle = "rgba(220,40,40,0.55)"; g.fillRect(i * bw, H - H * hA[i] / top, bw - 1, H * hA[i] / top);
    }
    const x = (t - lo) / (hi - lo) * W;
    g.strokeStyle = "#000"; g.lineWidth = 2; g.beginPath(); g.moveTo(x, 0); g.lineTo(x, H); g.stroke();
    g.fillStyle = "#000"; g.font = "12px sans-serif";
    g.fillText(`normal (blue) ${d.normal.length}, defective (red) ${d.anomalous.length}`, 6, hist.height - 5);
    const r = roc.getContext("2d"), S = roc.width;
    r.clearRect(0, 0, S, S); r.strokeStyle = "#999"; r.lineWidth = 1;
    r.beginPath(); r.moveTo(0, S); r.lineTo(S, 0); r.stroke();
    r.strokeStyle = "#1e78dc"; r.lineWidth = 2; r.beginPath();
    roc_pts.forEach(([fx, ty], i) => (i ? r.lineTo(fx * S, S - ty * S) : r.moveTo(fx * S, S - ty * S)));
    r.stroke();
    const c = counts(d.normal, d.anomalous, t);
    r.fillStyle = "#d00"; r.beginPath(); r.arc((c.fpr ?? 0) * S, S - (c.tpr ?? 0) * S, 5, 0, 2 * Math.PI); r.fill();
    for (const k of ["fp", "fn", "tp", "tn"]) document.getElementById(k).textContent = c[k];
    document.getElementById("fpr").textContent = fmt(c.fpr);
    document.getElementById("tpr").textContent = fmt(c.tpr);
  }
  range.addEventListener("input", () => { num.value = range.value; draw(Number(range.value)); });
  num.addEventListener("input", () => { if (num.value !== "") { range.value = num.value; draw(Number(num.value)); } });
  draw(Number(num.value));
  const form = document.getElementById("apply-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(form), status = document.getElementById("apply-status");
    try {
      const res = await postJSON(`/api/${encodeURIComponent(d.class)}/threshold`,
                                 { value: Number(num.value), who: f.get("who"), reason: f.get("reason") });
      document.getElementById("current").textContent = res.threshold.toFixed(4);
      status.textContent = `applied: ${res.record.previous.toFixed(4)} -> ${res.threshold.toFixed(4)}`;
    } catch (err) { status.textContent = "not applied: " + err.message; }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "object") objectPage();
  if (page === "threshold") thresholdPage();
});
