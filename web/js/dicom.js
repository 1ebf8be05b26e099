// DICOM in the browser: parsed by dicom-parser (npm), then the server's steps
// (pneumonia.image_files._read_dicom, i.e. pydicom's apply_modality_lut and apply_voi_lut, float32,
// MONOCHROME1 inverted) and pneumonia.pixels.to_model_mode's stretch to 8 bits. The arithmetic
// follows NumPy's types step by step, so the grey plane is the server's, bit for bit.

import { stretchToGrey } from "./pixels.js";

const UNCOMPRESSED = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]);
const COMPRESSED_NAMES = {
  "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
  "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
  "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
  "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
  "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction (Process 14, SV1)",
  "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
  "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
  "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
  "1.2.840.10008.1.2.4.91": "JPEG 2000",
  "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless",
  "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
  "1.2.840.10008.1.2.5": "RLE Lossless",
};
const SERVER_MODE = "use the server mode (the first tab), which reads it";

export function isDicom(bytes, name) {
  return (bytes.length >= 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM") || /\.dcm$/i.test(name);
}

export function readDicom(bytes, name, dicomParser, fail, checkLimits) {
  // -> {width, height, values: Float64Array of the displayed image}, or fail(message).
  let dataSet;
  try {
    dataSet = dicomParser.parseDicom(bytes, { untilTag: "x7fe00010" });
  } catch (err) {
    fail(`${name}: unreadable DICOM (${err.exception || err.message || err})`);
  }
  const pixelData = dataSet.elements.x7fe00010;
  if (!pixelData) fail(`${name}: DICOM file without pixel data (a report or structured document?)`);
  const width = dataSet.uint16("x00280011") || 0, height = dataSet.uint16("x00280010") || 0;
  checkLimits(name, width, height);
  const syntax = (dataSet.string("x00020010") || "1.2.840.10008.1.2.1").replace(/\0/g, "");
  if (!UNCOMPRESSED.has(syntax)) {
    fail(`${name}: its pixels are compressed as ${COMPRESSED_NAMES[syntax] || `transfer syntax ${syntax}`}, which the ` +
      `browser mode does not decode: ${SERVER_MODE}.`);
  }
  if ((dataSet.uint16("x00280002") || 1) !== 1) fail(`${name}: a colour DICOM, which the browser mode does not read: ${SERVER_MODE}.`);
  if (dataSet.elements.x00283000) fail(`${name}: its modality LUT is a table, which the browser mode does not apply: ${SERVER_MODE}.`);
  if (dataSet.elements.x00283010) fail(`${name}: its VOI LUT is a table, which the browser mode does not apply: ${SERVER_MODE}.`);

  const stored = storedValues(dataSet, pixelData, bytes, width * height, syntax === "1.2.840.10008.1.2.2", fail, name);
  const values = modalityLut(dataSet, stored);
  const windowed = voiWindow(dataSet, values) ?? values;
  // pydicom's result .astype(np.float32); MONOCHROME1 (high values dark) inverted in float32.
  const pixels = Float32Array.from(windowed);
  if ((dataSet.string("x00280004") || "").trim() === "MONOCHROME1") {
    let top = -Infinity;
    for (const v of pixels) if (v > top) top = v;
    for (let i = 0; i < pixels.length; i++) pixels[i] = top - pixels[i];
  }
  return stretchToGrey(pixels, width, height);
}

function storedValues(dataSet, pixelData, bytes, count, bigEndian, fail, name) {
  // The first frame's stored values, sign-extended where the pixel representation is signed.
  const allocated = dataSet.uint16("x00280100"), bitsStored = dataSet.uint16("x00280101") || allocated;
  const signed = dataSet.uint16("x00280103") === 1;
  if (allocated !== 8 && allocated !== 16) fail(`${name}: ${allocated} bits allocated per pixel, which the browser mode does not read: ${SERVER_MODE}.`);
  const step = allocated / 8;
  if (pixelData.length < count * step) fail(`${name}: unreadable DICOM (its pixel data is shorter than its rows and columns say)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset + pixelData.dataOffset, count * step);
  const out = new Float64Array(count);
  const shift = 32 - bitsStored;
  for (let i = 0; i < count; i++) {
    let v = step === 1 ? view.getUint8(i) : view.getUint16(2 * i, !bigEndian);
    if (signed) v = (v << shift) >> shift;  // two's complement in bitsStored bits
    out[i] = v;
  }
  return out;
}

function modalityLut(dataSet, stored) {
  // apply_modality_lut: Rescale Slope and Intercept, when both are there, in float64.
  if (!dataSet.elements.x00281053 || !dataSet.elements.x00281052) return stored;
  const slope = dataSet.floatString("x00281053", 0), intercept = dataSet.floatString("x00281052", 0);
  return stored.map((v) => v * slope + intercept);
}

function voiWindow(dataSet, values) {
  // apply_windowing (PS3.3 C.11.2.1.2): LINEAR, LINEAR_EXACT or SIGMOID; null without a window.
  if (!dataSet.elements.x00281050 || !dataSet.elements.x00281051) return null;
  let center = dataSet.floatString("x00281050", 0), width = dataSet.floatString("x00281051", 0);
  const fn = (dataSet.string("x00281056") || "LINEAR").trim().toUpperCase();
  const bits = dataSet.uint16("x00280101");
  let [low, high] = dataSet.uint16("x00280103") === 1 ? [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] : [0, 2 ** bits - 1];
  if (dataSet.elements.x00281053 && dataSet.elements.x00281052) {
    const slope = dataSet.floatString("x00281053", 0), intercept = dataSet.floatString("x00281052", 0);
    [low, high] = [low * slope + intercept, high * slope + intercept];
  }
  const range = high - low;
  if (fn === "SIGMOID") return values.map((x) => range / (1 + Math.exp(-4 * (x - center) / width)) + low);
  if (fn === "LINEAR") { center -= 0.5; width -= 1; }
  return values.map((x) => (x <= center - width / 2 ? low : x > center + width / 2 ? high : ((x - center) / width + 0.5) * range + low));
}
