// The out-of-distribution gate in the browser: a port of pneumonia/ood.py's scoring (the fitting
// stays in Python). Same numbers, in float64 as NumPy has them; the tensors come from the folder's
// gate file (ood.onnx-int8.safetensors for the int8 model) and its settings from config.json.

import { thumbnail } from "./pixels.js";

export const KINDS = ["ct", "mri", "other_radiograph", "lateral", "photo_or_document"];
const CHECK_SIDE = 256;

export function readSafetensors(buffer) {
  // The safetensors format: an 8-byte little-endian header length, a JSON header, then raw tensors.
  const view = new DataView(buffer);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLength)));
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (info.dtype !== "F32") throw new Error(`gate tensor ${name} is ${info.dtype}, not F32`);
    const [start, end] = info.data_offsets;
    const values = new Float32Array(buffer.slice(8 + headerLength + start, 8 + headerLength + end));
    tensors[name] = { shape: info.shape, data: Float64Array.from(values) };
  }
  return tensors;
}

export class Gate {
  constructor(settings, tensors) {
    this.settings = settings;
    this.blocks = [...settings.widths];
    if (settings.halves) this.blocks.push(settings.widths.reduce((a, b) => a + b, 0));
    const names = [...settings.layers, ...(settings.halves ? ["halves"] : [])];
    this.parts = names.map((name) => ({
      center: tensors[`${name}.center`].data,
      whiten: tensors[`${name}.whiten`],
      classMeans: tensors[`${name}.class_means`],
      scale: tensors[`${name}.scale`].data[0],
    }));
    this.heads = tensors["head.refuse.weight"] ? {
      refuse: [tensors["head.refuse.weight"].data, tensors["head.refuse.bias"].data[0]],
      adult: [tensors["head.adult.weight"].data, tensors["head.adult.bias"].data[0]],
      kind: [tensors["head.kind.weight"], tensors["head.kind.bias"].data],
    } : null;
  }

  get featureWidth() { return this.blocks.reduce((a, b) => a + b, 0); }

  verdict(features) {
    // OodGate.verdicts for one film's features.
    const whitened = [];
    let distance = -Infinity, offset = 0;
    this.blocks.forEach((width, b) => {
      const part = this.parts[b];
      const [rows, k] = part.whiten.shape;
      const w = new Float64Array(k);
      for (let i = 0; i < rows; i++) {
        const centred = features[offset + i] - part.center[i];
        for (let j = 0; j < k; j++) w[j] += centred * part.whiten.data[i * k + j];
      }
      let nearest = Infinity;
      for (let c = 0; c < part.classMeans.shape[0]; c++) {
        let d = 0;
        for (let j = 0; j < k; j++) { const e = w[j] - part.classMeans.data[c * k + j]; d += e * e; }
        nearest = Math.min(nearest, d);
      }
      distance = Math.max(distance, nearest / part.scale);
      whitened.push(...w);
      offset += width;
    });
    if (!this.heads) {
      return distance > this.settings.cutoff ? { outcome: "refuse", kind: "unlike", scores: { distance } }
        : { outcome: "answer", kind: null, scores: { distance } };
    }
    const inputs = [...whitened, Math.log(Math.max(distance, 1e-12))];
    const dot = (weights, row = 0) => inputs.reduce((sum, x, i) => sum + x * weights[row * inputs.length + i], 0);
    const sigmoid = ([weights, bias]) => 0.5 * (1 + Math.tanh(0.5 * (dot(weights) + bias)));
    const notFrontal = sigmoid(this.heads.refuse), adult = sigmoid(this.heads.adult);
    const kindLogits = KINDS.map((_, row) => dot(this.heads.kind[0].data, row) + this.heads.kind[1][row]);
    const top = Math.max(...kindLogits);
    const exps = kindLogits.map((z) => Math.exp(z - top));
    const kinds = exps.map((e) => e / exps.reduce((a, b) => a + b, 0));
    const scores = { distance, not_frontal_chest: notFrontal, adult };
    const cuts = this.settings.cuts;
    if (notFrontal > cuts.refuse) {
      const best = kinds.indexOf(Math.max(...kinds));
      return { outcome: "refuse", kind: kinds[best] >= (cuts.kind ?? 0) ? KINDS[best] : "not_frontal_chest", scores };
    }
    if (distance > this.settings.cutoff) return { outcome: "refuse", kind: adult > cuts.adult ? "adult" : "unlike", scores };
    if (adult > cuts.adult) return { outcome: "caution", kind: "adult", scores };
    return { outcome: "answer", kind: null, scores };
  }
}

export function imageVerdict(rgba, grey, settings) {
  // pneumonia.ood.image_verdict: a colour photo or a blank image is refused before the model runs.
  // Both checks look at a thumbnail at most CHECK_SIDE a side, made as Image.thumbnail makes it.
  const { width, height } = grey;
  const size = thumbnailSize(width, height);
  if (!grey.colour) {  // R = G = B: colourfulness 0, and the thumbnail's grey is the grey plane's thumbnail
    const spread = standardDeviation(size ? thumbnail(grey, size[0], size[1]).data : grey.data);
    return spread < settings.min_grey_spread ? { outcome: "refuse", kind: "blank", scores: { blank: round2(spread) } } : null;
  }
  const channels = [0, 1, 2].map((c) => {
    const plane = { width, height, data: new Uint8Array(width * height) };
    for (let i = 0; i < plane.data.length; i++) plane.data[i] = rgba[4 * i + c];
    return size ? thumbnail(plane, size[0], size[1]).data : plane.data;
  });
  const colour = colourfulness(...channels);
  if (colour > settings.max_colourfulness) return { outcome: "refuse", kind: "colour", scores: { colourfulness: round2(colour) } };
  // to_model_mode(thumbnail).convert("L"): the thumbnail's grey levels, by PIL's luma formula.
  const small = size ? channels[0].map((r, i) => (r * 19595 + channels[1][i] * 38470 + channels[2][i] * 7471 + 0x8000) >>> 16)
    : grey.data;
  const spread = standardDeviation(small);
  if (spread < settings.min_grey_spread) return { outcome: "refuse", kind: "blank", scores: { blank: round2(spread) } };
  return null;
}

export function thumbnailSize(width, height) {
  // Image.thumbnail's preserve_aspect_ratio for a CHECK_SIDE box; null when the image fits.
  if (width <= CHECK_SIDE && height <= CHECK_SIDE) return null;
  const aspect = width / height;
  const closest = (value, error) => Math.max([Math.floor(value), Math.ceil(value)].reduce((a, b) => (error(b) < error(a) ? b : a)), 1);
  if (1 >= aspect) return [closest(CHECK_SIDE * aspect, (n) => Math.abs(aspect - n / CHECK_SIDE)), CHECK_SIDE];
  return [CHECK_SIDE, closest(CHECK_SIDE / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - CHECK_SIDE / n)))];
}

function colourfulness(r, g, b) {
  // Hasler & Süsstrunk (2003): 0 for any grey image.
  const n = r.length, rg = new Float64Array(n), yb = new Float64Array(n);
  for (let i = 0; i < n; i++) { rg[i] = r[i] - g[i]; yb[i] = 0.5 * (r[i] + g[i]) - b[i]; }
  return Math.hypot(standardDeviation(rg), standardDeviation(yb)) + 0.3 * Math.hypot(mean(rg), mean(yb));
}

function mean(values) { let s = 0; for (const v of values) s += v; return s / values.length; }

function standardDeviation(values) {
  const m = mean(values);
  let s = 0;
  for (const v of values) s += (v - m) * (v - m);
  return Math.sqrt(s / values.length);
}

function round2(x) { return Math.round(x * 100) / 100; }
