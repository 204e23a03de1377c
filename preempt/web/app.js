// Preempt's page: choose images, protect them through the job API (/v1), watch them, compare, attack.
// Plain JavaScript, no outside resources: every request goes to the server that served this page.
"use strict";

const API = "/v1";
const POLL_MS = 400;
const KEY_STORAGE = "preempt.apiKey";
const $ = (sel, root = document) => root.querySelector(sel);

const state = { models: [], presets: {}, staged: [] };

// ---------------------------------------------------------------- HTTP

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, code, detail, retryAfter) {
    super(detail);
    this.status = status; this.code = code; this.detail = detail; this.retryAfter = retryAfter;
  }
}

// What a person should read for each failure the API documents (docs/api.md): the API's own detail follows.
const EXPLAIN = {
  400: "The request was not understood",
  401: "This server needs an API key: open \u201cAPI key\u201d above and paste yours",
  403: "This API key is not allowed here",
  404: "Not found (it may have expired)",
  409: "Not ready yet",
  413: "This file is too large for this server",
  415: "Refused",
  422: "A setting or the file was refused",
  429: "Too many requests for now",
  503: "The server is busy or restarting; try again shortly",
};

function explain(err) {
  if (!(err instanceof ApiError)) return `The server did not answer (${err.message}).`;
  const lead = EXPLAIN[err.status] || `The server answered ${err.status}`;
  const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : "";
  return `${lead}: ${err.detail} (HTTP ${err.status}${err.code ? ", " + err.code : ""}).${wait}`;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, body, headers: authHeaders() });
  if (!response.ok) {
    let code = "", detail = response.statusText;
    try { const j = await response.json(); code = j.error || ""; detail = j.detail || detail; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, code, detail, response.headers.get("Retry-After"));
  }
  return response;
}

const getJson = async (path) => (await call("GET", path)).json();

// ---------------------------------------------------------------- the form

function describeModel(m) {
  const size = m.input_size ? `${m.input_size[0]}\u00d7${m.input_size[1]}` : "any-size";
  const colour = m.channels === 1 ? "greyscale" : m.channels === 3 ? "colour" : "";
  const classes = m.class_names || [];
  const threat = m.threat ? ` It defends against changes of up to ${m.threat.epsilon} (${m.threat.norm}) by default.` : "";
  const names = classes.length ? ` It knows ${classes.length} classes: ${classes.join(", ")}.`
    : m.num_classes ? ` It knows ${m.num_classes} classes.` : "";
  const dataset = m.dataset ? ` trained on ${m.dataset}` : m.source === "added" ? ` added to this server (${m.format})` : "";
  const warn = classes.length
    ? ` It can only answer with these, so a photo of anything else (a cat, a face) gets one of them: pick the classifier your platform uses.`
    : "";
  const lead = m.description ? `${m.description.replace(/\.?$/, ".")} ` : "";
  return `${lead}A ${size} ${colour} image classifier${dataset}.${names}${warn}${threat}`.replace(/\s+/g, " ");
}

function describePreset(name) {
  const p = state.presets[name];
  if (!p) return "";
  return `${p.iterations} iterations of ${p.steps} attack steps` + (p.samples > 1 ? `, ${p.samples} starts` : "") +
    (name === "medium" ? " (the paper's setting)." : ".");
}

function selectedModel() { return state.models.find((m) => m.name === $("#model").value); }

function showModel() {
  const m = selectedModel();
  if (!m) return;
  $("#model-about").textContent = describeModel(m);
  const delta = $("#delta");
  if (m.threat) {
    delta.placeholder = String(m.threat.delta ?? m.threat.epsilon);
    delta.max = m.threat.norm === "linf" ? "1" : "1000";
    $("#delta-about").textContent = m.threat.norm === "linf"
      ? `Empty: ${delta.placeholder}, in units of the pixel range (0 to 1): at most ${Math.round(delta.placeholder * 255)}/255 per pixel.`
      : `Empty: ${delta.placeholder}, the l2 length of the whole change (pixels in 0 to 1).`;
  }
}

async function loadModels() {
  const error = $("#setup-error");
  try {
    const list = await getJson(`${API}/models`);
    state.models = list.models; state.presets = list.presets;
    error.hidden = true;
  } catch (err) {
    error.textContent = explain(err);
    error.hidden = false;
    if (err.status === 401 || err.status === 403) $("#key-box").open = true;
    $("#model-about").textContent = "";
    return;
  }
  const model = $("#model"), preset = $("#preset");
  model.replaceChildren(...state.models.map((m) => new Option(m.name + (m.default ? " (default)" : ""), m.name, m.default, m.default)));
  preset.replaceChildren(...Object.keys(state.presets).map((p) => new Option(p, p, p === "medium", p === "medium")));
  showModel();
  $("#preset-about").textContent = describePreset(preset.value);
  updateProtect();
}

function updateProtect() {
  const n = state.staged.length;
  const button = $("#protect");
  button.disabled = n === 0 || state.models.length === 0;
  button.textContent = n > 1 ? `Protect ${n} images` : "Protect";
}

function stage(files) {
  for (const f of files) state.staged.push(f);
  renderStaged();
}

function renderStaged() {
  const list = $("#staged");
  list.replaceChildren(...state.staged.map((f, i) => {
    const li = document.createElement("li");
    li.append(`${f.name} (${Math.ceil(f.size / 1024)} KB)`);
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "\u2715";
    remove.setAttribute("aria-label", `Remove ${f.name}`);
    remove.addEventListener("click", () => { state.staged.splice(i, 1); renderStaged(); });
    li.append(remove);
    return li;
  }));
  updateProtect();
}

function formFor(file, extra = {}) {
  const data = new FormData();
  data.append("file", file, file.name || "image.png");
  for (const [k, v] of Object.entries(extra)) if (v !== undefined && v !== null && v !== "") data.append(k, v);
  return data;
}

// ---------------------------------------------------------------- one job on the page

class JobCard {
  constructor(file, settings) {
    this.file = file; this.settings = settings; this.stopped = false;
    this.el = $("#job-template").content.firstElementChild.cloneNode(true);
    this.el.dataset.file = file.name;
    $(".job-name", this.el).textContent = file.name;
    this.cancelButton = $(".cancel", this.el);
    this.cancelButton.addEventListener("click", () => this.cancel());
    $(".attack", this.el).addEventListener("click", () => this.attack());
    const slider = $(".slider", this.el);
    slider.setAttribute("aria-label", `Line between original and protected ${file.name}`);
    slider.addEventListener("input", () => this.cut(slider.value));
    $("#jobs").prepend(this.el);
    $("#jobs-title").hidden = false;
  }

  say(text) { $(".status", this.el).textContent = text; }

  fail(text) {
    if (this.el.dataset.state !== "failed") this.say("Refused.");
    this.el.dataset.state = "error";
    const e = $(".error", this.el);
    e.textContent = text; e.hidden = false;
    this.cancelButton.hidden = true;
    $(".bar", this.el).hidden = true;
  }

  // Submits the job and resolves once the server has it, so that files queue in the order chosen; watching
  // it to its end goes on (this.watching).
  async submit() {
    this.say("Uploading\u2026");
    try {
      const body = formFor(this.file, this.settings);
      const created = await (await call("POST", `${API}/robustify`, body)).json();
      this.jobId = created.job_id;
      this.el.dataset.job = created.job_id;
    } catch (err) {
      this.fail(explain(err));
      return;
    }
    this.watching = this.watch().catch((err) => this.fail(explain(err)));
  }

  async watch() {
    while (!this.stopped) {
      const job = await getJson(`${API}/jobs/${this.jobId}`);
      this.show(job);
      if (["succeeded", "failed", "cancelled"].includes(job.status)) return this.ended(job);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  show(job) {
    this.el.dataset.state = job.status;
    const bar = $(".bar", this.el), p = job.progress;
    if (job.status === "queued") {
      bar.removeAttribute("value");
      this.say(job.queue_position ? `Queued: ${job.queue_position} job(s) ahead.` : "Queued: next in line.");
    } else if (job.status === "running") {
      bar.max = Math.max(p.total, 1); bar.value = p.iteration;
      const loss = p.loss === null || p.loss === undefined ? "" : `, robust loss ${p.loss.toFixed(3)}`;
      this.say(p.total ? `Protecting: iteration ${p.iteration} of at most ${p.total}${loss}.` : "Starting\u2026");
    }
  }

  async ended(job) {
    this.cancelButton.hidden = true;
    const bar = $(".bar", this.el);
    bar.max = 1; bar.value = 1;
    if (job.status === "cancelled") { this.say("Cancelled."); bar.hidden = true; return; }
    if (job.status === "failed") { this.say("Failed."); return this.fail(job.error || "the job failed"); }
    this.report = job.report;
    const seconds = job.timings.run_seconds ?? 0;
    this.say(`Done in ${seconds.toFixed(1)} s.`);
    this.el.dataset.state = "loading";
    const png = await (await call("GET", job.result_url)).blob();
    this.protectedBlob = png;
    await this.showResult(png, job.report);
    this.el.dataset.state = "done";
  }

  async cancel() {
    this.cancelButton.disabled = true;
    if (!this.jobId) return;
    try {
      await call("DELETE", `${API}/jobs/${this.jobId}`);
    } catch (err) {
      this.fail(explain(err));
    }
  }

  cut(percent) {
    $(".protected", this.el).style.clipPath = `inset(0 0 0 ${percent}%)`;
    $(".stack", this.el).style.setProperty("--cut", `${percent}%`);
  }

  async showResult(png, report) {
    const original = $(".original", this.el), protectedImg = $(".protected", this.el);
    const stem = this.file.name.replace(/\.[^.]*$/, "");
    const loaded = (img) => new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error("the image did not load")); });
    const a = loaded(original), b = loaded(protectedImg);
    original.src = URL.createObjectURL(this.file);
    protectedImg.src = URL.createObjectURL(png);
    await Promise.all([a, b]);
    // Small images (a 28x28 model's) are shown with square pixels; photos smoothly.
    this.el.classList.toggle("small", protectedImg.naturalWidth < 256);
    const download = $(".download", this.el);
    download.href = protectedImg.src;
    download.download = `${stem}-protected.png`;
    $(".result", this.el).hidden = false;
    this.drawDifference(original, protectedImg);
    this.describe(report);
  }

  drawDifference(original, protectedImg) {
    const w = protectedImg.naturalWidth, h = protectedImg.naturalHeight;
    const pixels = (img) => {
      const c = document.createElement("canvas"); c.width = w; c.height = h;
      const ctx = c.getContext("2d"); ctx.drawImage(img, 0, 0, w, h);
      return ctx.getImageData(0, 0, w, h).data;
    };
    const o = pixels(original), p = pixels(protectedImg);
    let largest = 0;
    for (let i = 0; i < o.length; i += 4) {
      for (let c = 0; c < 3; c++) largest = Math.max(largest, Math.abs(p[i + c] - o[i + c]));
    }
    const gain = largest ? 127 / largest : 1;
    const diffCanvas = $(".difference", this.el), heatCanvas = $(".heatmap", this.el);
    for (const c of [diffCanvas, heatCanvas]) { c.width = w; c.height = h; }
    const diff = diffCanvas.getContext("2d").createImageData(w, h);
    const heat = heatCanvas.getContext("2d").createImageData(w, h);
    for (let i = 0; i < o.length; i += 4) {
      let m = 0;
      for (let c = 0; c < 3; c++) {
        const d = p[i + c] - o[i + c];
        diff.data[i + c] = 128 + d * gain;
        m = Math.max(m, Math.abs(d));
      }
      diff.data[i + 3] = 255;
      const t = largest ? m / largest : 0;  // black -> red -> yellow -> white
      heat.data[i] = Math.min(255, 3 * 255 * t);
      heat.data[i + 1] = Math.min(255, Math.max(0, 3 * 255 * t - 255));
      heat.data[i + 2] = Math.max(0, 3 * 255 * t - 510);
      heat.data[i + 3] = 255;
    }
    diffCanvas.getContext("2d").putImageData(diff, 0, 0);
    heatCanvas.getContext("2d").putImageData(heat, 0, 0);
    const amp = gain.toFixed(1);
    $(".difference-caption", this.el).textContent =
      `The change, amplified ${amp}\u00d7 around grey (the largest is ${largest}/255 per pixel).`;
    diffCanvas.setAttribute("aria-label", `The change between the images amplified ${amp} times`);
    $(".heatmap-caption", this.el).textContent = `Where it changed: black none, white ${largest}/255.`;
    heatCanvas.setAttribute("aria-label", "A heat map of how much each pixel changed");
  }

  describe(r) {
    const items = [];
    const used = r.norm === "linf" ? r.linf : r.l2;
    const percent = r.delta ? Math.round((100 * used) / r.delta) : 0;
    items.push(r.norm === "linf"
      ? `Budget used: pixels moved by at most ${Math.round(r.linf * 255)}/255 (${r.linf.toFixed(3)} of delta ${r.delta}, ${percent}%).`
      : `Budget used: an l2 change of ${r.l2.toFixed(3)} of delta ${r.delta} (${percent}%).`);
    items.push(r.psnr === null || r.psnr === undefined
      ? "The image did not change."
      : `Difference from the original: PSNR ${r.psnr.toFixed(1)} dB, SSIM ${r.ssim === undefined ? "n/a" : r.ssim.toFixed(3)} (1 means identical).`);
    items.push(`The classifier (${r.model}) calls it \u201c${r.label_name}\u201d` +
      (r.label_kept ? ", as it did the original." : ", which is not what it called the original."));
    if (r.verified) {
      const attack = r.verified.attack.replace("pgd-20x5", "PGD-20 with 5 restarts").replace(/^pgd-20(?=\+|$)/, "PGD-20").replace("apgd-ce", "APGD-CE").replace("apgd-t", "APGD-T (9 targets)").replaceAll("+", ", ");
      items.push(r.verified.robust
        ? `Verified: ${attack} at epsilon ${r.epsilon} could not change the label of the PNG as written.`
        : `Not verified: ${attack} at epsilon ${r.epsilon} changed the label of the written PNG. Try the high effort or a larger delta.`);
    } else {
      items.push("Not checked (verification was off).");
    }
    if (r.scale !== undefined) {
      items.push(r.scale === 0
        ? `Strength ${r.strength}: the original already withstands the check, so it was left as it was.`
        : `Strength ${r.strength}: kept ${Math.round(r.scale * 100)}% of the change the robustifier found.`);
    }
    if (r.texture !== undefined) {
      items.push(r.texture
        ? "Shaped by the image: flat areas changed least."
        : "Not shaped: the check rejected the shaped change, so the change uses the whole budget everywhere.");
    }
    items.push(`${r.passes} forward-backward passes of the classifier, ${r.iterations_run} iterations.`);
    const list = $(".report", this.el);
    list.replaceChildren(...items.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
    const verdict = list.children[3];
    if (r.verified) verdict.className = r.verified.robust ? "ok" : "bad";
  }

  // Grey-box attack (POST /v1/attack) on the original and on the protected image, at the same epsilon.
  async attack() {
    const button = $(".attack", this.el), out = $(".attack-result", this.el);
    button.disabled = true;
    out.textContent = "Attacking both images with PGD-20\u2026";
    const r = this.report;
    const fields = { model: r.model, norm: r.norm, epsilon: r.epsilon, label: r.label, attack: "pgd" };
    const protectedFile = new File([this.protectedBlob], `${this.file.name}-protected.png`, { type: "image/png" });
    try {
      const [before, after] = await Promise.all([this.attackOne(this.file, fields), this.attackOne(protectedFile, fields)]);
      out.replaceChildren(this.attackTable(r, before, after));
      this.el.dataset.attack = "done";
    } catch (err) {
      out.textContent = explain(err);
      out.setAttribute("role", "alert");
      button.disabled = false;
    }
  }

  async attackOne(file, fields) {
    const created = await (await call("POST", `${API}/attack?wait=60`, formFor(file, fields))).json();
    let job = created.status ? created : await getJson(created.status_url);
    while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
      await new Promise((ok) => setTimeout(ok, POLL_MS));
      job = await getJson(`${API}/jobs/${job.job_id}`);
    }
    if (job.status !== "succeeded") throw new Error(job.error || `the attack ${job.status}`);
    const png = await (await call("GET", job.result_url)).blob();
    return { report: job.report, image: URL.createObjectURL(png) };
  }

  attackTable(r, before, after) {
    const names = selectedModelNames(r.model);
    const name = (i) => names[i] ?? `class ${i}`;
    const table = document.createElement("table");
    table.className = "attack-table";
    const caption = table.createCaption();
    caption.textContent = `A man in the middle adds a change of at most ${r.epsilon} (${r.norm}) to each image (PGD-20, grey-box):`;
    const head = table.createTHead().insertRow();
    for (const t of ["", "Classifier says", "After the attack", "Attacked image"]) {
      const th = document.createElement("th"); th.scope = "col"; th.textContent = t; head.append(th);
    }
    const body = table.createTBody();
    for (const [label, res] of [["Original", before], ["Protected", after]]) {
      const row = body.insertRow();
      row.dataset.row = label.toLowerCase();
      const th = document.createElement("th"); th.scope = "row"; th.textContent = label; row.append(th);
      row.insertCell().textContent = name(res.report.prediction);
      const held = res.report.greybox.robust;
      const cell = row.insertCell();
      cell.textContent = `${name(res.report.greybox.adversarial_label)}: ${held ? "the attack failed" : "fooled"}`;
      cell.className = held ? "ok" : "bad";
      cell.dataset.robust = String(held);
      const img = document.createElement("img");
      img.src = res.image; img.alt = `the attacked ${label.toLowerCase()} image`;
      row.insertCell().append(img);
    }
    return table;
  }
}

function selectedModelNames(model) {
  const m = state.models.find((x) => x.name === model);
  return (m && m.class_names) || [];
}

// ---------------------------------------------------------------- wiring

function settingsFromForm() {
  return { model: $("#model").value, preset: $("#preset").value, delta: $("#delta").value.trim(),
    strength: $("#strength").value, texture: $("#texture").checked ? "true" : undefined };
}

function init() {
  const key = $("#apikey");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("#model").addEventListener("change", showModel);
  $("#preset").addEventListener("change", () => { $("#preset-about").textContent = describePreset($("#preset").value); });
  const files = $("#files");
  files.addEventListener("change", () => { stage(files.files); files.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); stage(e.dataTransfer.files); });
  $("#options").addEventListener("submit", (e) => {
    e.preventDefault();
    const settings = settingsFromForm();
    const chosen = state.staged.splice(0);
    renderStaged();
    (async () => {
      for (const file of chosen) {
        const card = new JobCard(file, settings);
        await card.submit();  // the job exists: the next file queues behind it
      }
    })();
  });
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
