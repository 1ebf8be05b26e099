// The private mode's page: films are decoded, preprocessed and classified here, in the browser.
// Nothing about a film is sent anywhere; the model, its gate and the runtime are fetched once,
// before the first film (tests/test_private_mode.py records every request to prove it).

import { Gate, imageVerdict, readSafetensors } from "./gate.js";
import { modelInput } from "./pixels.js";
import { Reader } from "./reading.js";
import { loadDicomParser, loadOnnxRuntime } from "./runtime.js";
import { decodeFilm, UnreadableFilm } from "./decode.js";

const status = document.getElementById("status");
const input = document.getElementById("films");
const results = document.getElementById("results");

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

async function loadModel() {
  const started = performance.now();
  const phases = {};
  const config = await fetchOk("model/config.json").then((r) => r.json());
  const settings = config.ood && (config.ood.backends?.["onnx-int8"] ?? config.ood);
  const [words, runtime, dicom, onnx, gateFile] = await Promise.all([fetchOk("model/words.json").then((r) => r.json()),
    loadOnnxRuntime(), loadDicomParser(), fetchOk("model/browser.onnx").then((r) => r.arrayBuffer()),
    settings ? fetchOk(`model/${settings.file}`).then((r) => r.arrayBuffer()) : null]);
  phases.fetched = performance.now() - started;
  const session = await runtime.ort.InferenceSession.create(onnx, { executionProviders: ["wasm"] });
  phases.session = performance.now() - started - phases.fetched;
  const gate = settings ? new Gate(settings, readSafetensors(gateFile)) : null;
  return { config, words, settings, session, gate, ort: runtime.ort, dicomParser: dicom.dicomParser,
    reader: new Reader(config, words), readyMs: performance.now() - started, phases, runtimeFrom: [...runtime.from, ...dicom.from] };
}

async function classify(model, film) {
  // Classifier.read for one decoded film: image checks, model, gate, band.
  const cheap = model.settings ? imageVerdict(film.rgba, film.grey, model.settings) : null;
  if (cheap) return model.reader.refusal(cheap);
  const { pixels, height, width } = modelInput(film.grey, model.config);
  const feeds = { [model.session.inputNames[0]]: new model.ort.Tensor("float32", pixels, [1, 3, height, width]) };
  const outputs = await model.session.run(feeds);
  const logits = outputs[model.session.outputNames[0]].data;
  const features = model.gate && outputs[model.session.outputNames[1]]?.data;
  const verdict = model.gate ? model.gate.verdict(Float64Array.from(features)) : { outcome: "answer", kind: null, scores: {} };
  return { ...model.reader.read(logits, verdict), logits: Array.from(logits) };
}

function render(file, found) {
  const card = document.createElement("section");
  card.className = "reading";
  card.dataset.file = file.name;
  card.dataset.markdown = found.text;
  card.dataset.outcome = found.outcome;
  const lines = found.text.split("\n");
  const heading = lines[0].startsWith("### ") ? lines.shift().slice(4) : "NOT READ";
  const title = document.createElement("h3");
  title.textContent = `${heading} — ${file.name}`;
  card.append(title);
  // No bars on a refusal, as on the server: probabilities of an image the model cannot judge look like an answer.
  if (found.probabilities && found.outcome !== "refuse") card.append(bars(found.probabilities));
  for (const line of lines.filter((l) => l.trim())) {
    const block = document.createElement(line.startsWith("> ") ? "blockquote" : "p");
    block.textContent = line.replace(/^> /, "").replaceAll("**", "");
    card.append(block);
  }
  results.prepend(card);
}

function bars(probabilities) {
  const list = document.createElement("div");
  list.className = "bars";
  for (const [label, p] of Object.entries(probabilities).sort((a, b) => b[1] - a[1])) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = label;
    const meter = document.createElement("meter");
    Object.assign(meter, { min: 0, max: 1, value: p });
    meter.setAttribute("aria-valuenow", String(Math.round(100 * p)));
    row.append(Object.assign(document.createElement("span"), { textContent: label }), meter,
      Object.assign(document.createElement("span"), { textContent: `${(100 * p).toFixed(0)}%` }));
    list.append(row);
  }
  return list;
}

async function readFiles(model, files) {
  const readings = [];
  for (const file of files) {
    const started = performance.now();
    let found;
    try {
      const film = await decodeFilm(file, model.dicomParser);
      const decodedMs = performance.now() - started;
      found = { ...(await classify(model, film)), decodedMs };
    } catch (err) {
      if (!(err instanceof UnreadableFilm)) console.error(err);
      found = { outcome: "unreadable", text: err.message, probabilities: null };
    }
    found.totalMs = performance.now() - started;
    readings.push({ file: file.name, ...found });
    render(file, found);
  }
  return readings;
}

const state = { ready: false, readings: [], error: null };
window.privateMode = state;  // for the tests and the benchmark: the numbers behind what the page shows

loadModel().then((model) => {
  Object.assign(state, { ready: true, readyMs: model.readyMs, phases: model.phases, runtimeFrom: model.runtimeFrom });
  status.textContent = `Ready: the model runs in this browser (session created in ${(model.readyMs / 1000).toFixed(1)} s).`;
  input.disabled = false;
  input.addEventListener("change", async () => {
    const files = Array.from(input.files);
    state.busy = true;
    state.readings = state.readings.concat(await readFiles(model, files));
    state.busy = false;
    input.value = "";
  });
}).catch((err) => {
  state.error = err.message;
  status.textContent = `The private mode could not start: ${err.message}`;
});
