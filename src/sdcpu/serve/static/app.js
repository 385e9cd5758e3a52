// The page of `sdcpu serve`: plain JavaScript against the native API (/api), no build step, no CDN.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null; // the job being followed

function detail(body) {
  // FastAPI's validation errors are a list; sdcpu's own are a string.
  const d = body && body.detail;
  return Array.isArray(d) ? d.map((e) => `${e.loc.slice(-1)[0]}: ${e.msg}`).join("; ") : String(d || "request failed");
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function init() {
  const model = await (await fetch("/api/model")).json();
  $("model").textContent = `${model.name} · ${model.format} ${model.precision} · ${model.size}×${model.size}`;
  for (const name of model.schedulers) $("scheduler").add(new Option(name, name));
  for (const id of ["width", "height"]) Object.assign($(id), { value: model.size, step: model.multiple });
  // LoRAs are named in the prompt as A1111 does: <lora:NAME:WEIGHT>.
  for (const name of model.loras) $("lora").add(new Option(name, name));
  $("loras").hidden = model.loras.length === 0;
  $("add_lora").addEventListener("click", () => {
    $("prompt").value = `${$("prompt").value.trim()} <lora:${$("lora").value}:${$("lora_weight").value || 1}>`.trim();
  });
  // ControlNets are picked from the server's folder (--controlnet-dir, or the demo's own).
  for (const name of model.controlnets) $("control_model").add(new Option(name, name));
  for (const name of model.control_modules.filter((name) => !["none", "canny", "depth_midas"].includes(name))) {
    $("control_module").add(new Option(`${name}: the image's ${name} map`, name));
  }
  $("controlnet").hidden = model.controlnets.length === 0;
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => current && fetch(`/api/jobs/${current}/cancel`, { method: "POST" }));
  await gallery();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function request() {
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, steps: number("steps"),
    guidance: number("guidance"), seed: number("seed"), width: number("width"), height: number("height"),
    scheduler: $("scheduler").value || null,
  };
  const file = $("init_image").files[0];
  if (file) Object.assign(body, { init_image: await readFile(file), strength: number("strength") });
  const control = $("control_image").files[0];
  if (control) {
    body.controls = [{
      model: $("control_model").value, image: await readFile(control), module: $("control_module").value,
      weight: number("control_weight"), start: number("control_start"), end: number("control_end"),
      mode: $("control_mode").value,
    }];
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  const response = await fetch("/api/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(await request()),
  });
  const job = await response.json();
  if (!response.ok) return setStatus(detail(job), true);
  follow(job);
}

function follow(job) {
  current = job.id;
  $("generate").disabled = true;
  $("cancel").disabled = false;
  setStatus(job.position ? `queued, ${job.position} ahead` : "starting…");
  const events = new EventSource(`/api/jobs/${job.id}/events`);
  events.addEventListener("progress", (e) => show(JSON.parse(e.data)));
  events.addEventListener("end", () => {
    events.close();
    current = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
    gallery();
  });
}

function show(job) {
  $("progress").value = job.total ? job.step / job.total : 0;
  const output = $("output");
  if (job.status === "running") {
    setStatus(`step ${job.step} of ${job.total}`);
    if (job.preview) Object.assign($("preview"), { src: job.preview, hidden: false });
  } else if (job.status === "done") {
    setStatus(`done: seed ${job.settings.seed}`);
    output.replaceChildren(...job.images.map((src) => Object.assign(new Image(), { src, alt: job.settings.prompt, className: "result" })));
    output.append(Object.assign(new Image(), { id: "preview", hidden: true }));
  } else if (job.status === "failed") {
    setStatus(job.error, true);
  } else if (job.status === "cancelled") {
    setStatus("cancelled");
  }
}

function reuse(settings) {
  for (const key of ["prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height", "scheduler"]) {
    if (settings[key] !== undefined) $(key).value = settings[key];
  }
  window.scrollTo({ top: 0, behavior: "smooth" });
}

async function gallery() {
  const jobs = await (await fetch("/api/jobs")).json();
  const figures = jobs.filter((job) => job.status === "done").flatMap((job) => job.images.map((src) => {
    const figure = document.createElement("figure");
    figure.title = "reuse these settings";
    figure.append(Object.assign(new Image(), { src, alt: job.settings.prompt }));
    figure.append(Object.assign(document.createElement("figcaption"), { textContent: `${job.settings.seed} · ${job.settings.prompt}` }));
    figure.addEventListener("click", () => reuse(job.settings));
    return figure;
  }));
  $("gallery").replaceChildren(...figures);
}

init().catch((err) => setStatus(`cannot reach the server: ${err}`, true));
