// A film's pixels to the model's input, in the browser: a port of pneumonia/pixels.py, bit for bit.
//
// The server reads a film with Pillow; these are Pillow 12's own integer algorithms written again
// (libImaging/Resample.c, Convert.c; ImageOps.equalize), because the canvas's resize moves
// P(PNEUMONIA) by up to 0.09 and flips decisions near the threshold. tests/test_private_mode.py
// holds this file to pneumonia.pixels on every test film: the same input tensor, so the same logits.
//
// A "grey plane" here is {width, height, data: Uint8Array} of 8-bit grey levels, which is what
// pneumonia.pixels.to_model_mode makes of any 8-bit film (its three channels are copies of it).

export function greyFromRGBA(rgba, width, height) {
  // PIL's RGB -> L: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16 (ITU-R 601-2 luma, 16-bit fixed point).
  // The caller composites transparent pixels over black first, as to_model_mode does.
  // ``colour`` says whether any pixel has R, G and B apart (a grey film has none).
  const data = new Uint8Array(width * height);
  const pixels = new Uint32Array(rgba.buffer, rgba.byteOffset, width * height);  // one read per pixel (little-endian RGBA)
  let colour = false;
  for (let i = 0; i < data.length; i++) {
    const p = pixels[i], r = p & 255, g = (p >>> 8) & 255, b = (p >>> 16) & 255;
    data[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;
    if (r !== g || g !== b) colour = true;
  }
  return { width, height, data, colour };
}

export function stretchToGrey(values, width, height) {
  // to_model_mode for 16-bit and float pixels (a DICOM, a 16-bit PNG): min..max stretched to 0..255,
  // rounded half to even as NumPy's np.round does.
  let low = Infinity, high = -Infinity;
  for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
  const data = new Uint8Array(width * height);
  if (high > low) {
    const factor = 255.0 / (high - low);
    for (let i = 0; i < data.length; i++) data[i] = roundHalfEven((values[i] - low) * factor);
  }
  return { width, height, data };
}

function roundHalfEven(x) {
  const floor = Math.floor(x), rest = x - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// --- resize: Pillow's two-pass convolution with 8-bit fixed-point coefficients ---------------------

const PRECISION_BITS = 32 - 8 - 2;
const FILTERS = {
  bicubic: { support: 2.0, f: (x) => {
    const a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  } },
  bilinear: { support: 1.0, f: (x) => { if (x < 0.0) x = -x; return x < 1.0 ? 1.0 - x : 0.0; } },
  box: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
};

function coefficients(inSize, in0, in1, outSize, filter) {
  // Resample.c precompute_coeffs + normalize_coeffs_8bpc. in0/in1 are C floats: their difference is too.
  let scale = Math.fround(Math.fround(in1) - Math.fround(in0)) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const inverse = 1.0 / filterscale;
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = Math.fround(in0) + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { k[x] = filter.f((x + xmin - center + 0.5) * inverse); ww += k[x]; }
    for (let x = 0; x < ksize; x++) {
      const w = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0;
      weights[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, weights, bounds };
}

function clip8(sum) {
  const v = sum >> PRECISION_BITS;  // the sums stay within a 32-bit int, as in C
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

export function resample(plane, width, height, interpolation = "bicubic", box = [0, 0, plane.width, plane.height]) {
  // Image.resize((width, height), filter, box) on 8-bit pixels: horizontal pass, then vertical.
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation ${interpolation} is not supported in the browser: use bicubic, bilinear or box`);
  if (width === plane.width && height === plane.height && box[0] === 0 && box[1] === 0 &&
      box[2] === plane.width && box[3] === plane.height) return plane;
  const horizontal = coefficients(plane.width, box[0], box[2], width, filter);
  const vertical = coefficients(plane.height, box[1], box[3], height, filter);
  let source = plane;
  const needHorizontal = width !== plane.width || box[0] !== 0 || box[2] !== width;
  const needVertical = height !== plane.height || box[1] !== 0 || box[3] !== height;
  const first = vertical.bounds[0];
  const last = vertical.bounds[height * 2 - 2] + vertical.bounds[height * 2 - 1];
  if (needHorizontal) {
    for (let i = 0; i < height; i++) vertical.bounds[i * 2] -= first;
    const rows = last - first;
    const out = new Uint8Array(width * rows);
    const { ksize, weights, bounds } = horizontal;
    const data = source.data, half = 1 << (PRECISION_BITS - 1);
    for (let y = 0; y < rows; y++) {
      const line = (y + first) * source.width, row = y * width;
      for (let xx = 0; xx < width; xx++) {
        const start = line + bounds[xx * 2], end = start + bounds[xx * 2 + 1];
        let sum = half;
        for (let i = start, k = xx * ksize; i < end; i++, k++) sum += data[i] * weights[k];
        out[row + xx] = clip8(sum);
      }
    }
    source = { width, height: rows, data: out };
  }
  if (!needVertical) return source;
  const out = new Uint8Array(width * height);
  const { ksize, weights, bounds } = vertical;
  for (let yy = 0; yy < height; yy++) {
    const ymin = bounds[yy * 2], count = bounds[yy * 2 + 1];
    for (let xx = 0; xx < width; xx++) {
      let sum = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < count; y++) sum += source.data[(ymin + y) * width + xx] * weights[yy * ksize + y];
      out[yy * width + xx] = clip8(sum);
    }
  }
  return { width, height, data: out };
}

function reduce(plane, fx, fy) {
  // Image.reduce((fx, fy)) on 8-bit pixels (libImaging/Reduce.c): each fx x fy block's sum, plus half
  // the block, times a 24-bit fixed-point reciprocal; a partial last column, row and corner alike.
  const { width, height, data } = plane;
  const out = { width: Math.ceil(width / fx), height: Math.ceil(height / fy) };
  out.data = new Uint8Array(out.width * out.height);
  const multiplier = (n) => Math.trunc(Math.fround(2 ** 32 / Math.fround(256 * n)));  // C's float division_UINT32
  const sums = new Uint32Array(out.width);
  for (let y = 0; y < out.height; y++) {
    const y0 = y * fy, rows = Math.min(fy, height - y0);
    sums.fill(0);
    for (let yy = y0; yy < y0 + rows; yy++) {
      const line = yy * width;
      for (let x = 0, xx = 0; x < out.width; x++) {
        let sum = 0;
        for (const end = Math.min(xx + fx, width); xx < end; xx++) sum += data[line + xx];
        sums[x] += sum;
      }
    }
    for (let x = 0; x < out.width; x++) {
      const n = rows * Math.min(fx, width - x * fx);
      out.data[y * out.width + x] = Math.floor(((sums[x] + Math.trunc(n / 2)) * multiplier(n)) / 2 ** 24);
    }
  }
  return out;
}

export function thumbnail(plane, width, height) {
  // Image.thumbnail's resize with reducing_gap 2.0: an integer box reduce first, then bicubic from
  // the reduced image's matching (fractional) box. The box reduce is what makes a 20-megapixel film's
  // thumbnail cheap; without it the result differs.
  const fx = Math.trunc(plane.width / width / 2.0) || 1, fy = Math.trunc(plane.height / height / 2.0) || 1;
  if (fx === 1 && fy === 1) return resample(plane, width, height, "bicubic");
  const reduced = reduce(plane, fx, fy);
  return resample(reduced, width, height, "bicubic", [0, 0, plane.width / fx, plane.height / fy]);
}

export function resizeForModel(plane, dataConfig) {
  // pneumonia.pixels.resize: timm's evaluation resize and centre crop.
  const [height, width] = dataConfig.input_size.slice(-2);
  const interpolation = dataConfig.interpolation || "bilinear";
  const cropPct = dataConfig.crop_pct || 0.875;
  const scale = [Math.floor(height / cropPct), Math.floor(width / cropPct)];
  const mode = dataConfig.crop_mode || "center";
  let image = plane;
  if (mode === "squash" || (mode === "center" && scale[0] !== scale[1])) {
    image = resample(image, scale[1], scale[0], interpolation);
  } else if (mode === "center") {
    const short = Math.min(image.width, image.height), long = Math.max(image.width, image.height);
    const newShort = scale[0], newLong = Math.trunc(scale[0] * long / short);
    const [w, h] = image.width <= image.height ? [newShort, newLong] : [newLong, newShort];
    if (w !== image.width || h !== image.height) image = resample(image, w, h, interpolation);
  } else {
    throw new Error(`crop_mode ${mode} is not supported: use squash or center`);
  }
  return centreCrop(image, height, width);
}

function centreCrop(plane, height, width) {
  if (plane.width === width && plane.height === height) return plane;
  if (width > plane.width || height > plane.height) throw new Error(`${plane.width}x${plane.height} px is smaller than the ${width}x${height} crop`);
  const top = roundHalfEven((plane.height - height) / 2.0), left = roundHalfEven((plane.width - width) / 2.0);  // Python's round()
  const data = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) data.set(plane.data.subarray((top + y) * plane.width + left, (top + y) * plane.width + left + width), y * width);
  return { width, height, data };
}


// --- intensity standardisation ----------------------------------------------------------------

export function equalize(plane) {
  // PIL.ImageOps.equalize on an L image.
  const histogram = new Array(256).fill(0);
  for (const v of plane.data) histogram[v]++;
  const used = histogram.filter((count) => count);
  if (used.length <= 1) return plane;
  const step = Math.floor((used.reduce((a, b) => a + b, 0) - used[used.length - 1]) / 255);
  if (!step) return plane;
  const lut = new Uint8Array(256);
  let n = Math.floor(step / 2);
  for (let i = 0; i < 256; i++) { lut[i] = Math.min(255, Math.floor(n / step)); n += histogram[i]; }
  return { width: plane.width, height: plane.height, data: plane.data.map((v) => lut[v]) };
}

export function standardiseIntensity(plane, method) {
  if (method === "none") return plane;
  if (method === "equalize") return equalize(plane);
  throw new Error(`intensity standardisation "${method}" has no browser port (only equalize): use the server mode`);
}

// --- the model's input ---------------------------------------------------------------------------

export function modelInput(plane, config) {
  // pneumonia.pixels.model_input: Float32Array (3 * H * W), channels first. The arithmetic is
  // NumPy's in float32: x / 255, then (x - mean) / std, each result rounded to float32.
  const pretrained = config.pretrained_cfg;
  const xray = config.xray_preprocessing || {};
  if (xray.crop_borders) throw new Error("this model crops film borders, which the browser mode does not do yet: use the server mode");
  const dataConfig = { input_size: pretrained.input_size, interpolation: pretrained.interpolation || "bilinear",
    crop_pct: pretrained.crop_pct ?? 0.875, crop_mode: pretrained.crop_mode || "center" };
  const image = standardiseIntensity(resizeForModel(plane, dataConfig), xray.intensity || "none");
  const size = image.width * image.height;
  const out = new Float32Array(3 * size);
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const mean = f(pretrained.mean[c]), std = f(pretrained.std[c]);
    for (let i = 0; i < size; i++) out[c * size + i] = f(f(f(image.data[i] / 255) - mean) / std);
  }
  return { pixels: out, height: image.height, width: image.width };
}
