// A picked file to pixels, in the browser, within a chest film's limits (pneumonia.image_files).
// JPEG and 8-bit PNG are decoded by the browser itself, with no colour management, so that its
// pixels are the ones Pillow reads; grey levels then follow Pillow's formula (pixels.greyFromRGBA).

import { isDicom, readDicom } from "./dicom.js";
import { greyFromRGBA } from "./pixels.js";

export class UnreadableFilm extends Error {}

// pneumonia.image_files's limits, checked from the file's header before any pixel is decoded.
const MIN_SIDE = 64, MAX_ASPECT_RATIO = 3.0, MAX_PIXELS = 64_000_000;
const SERVER_MODE = "use the server mode (the first tab), which reads it";

export function checkLimits(name, width, height) {
  const size = `${width}x${height} px`;
  if (width * height > MAX_PIXELS) {
    throw new UnreadableFilm(`${name}: ${size} (${Math.round(width * height / 1e6)} megapixels) is over the ` +
      `${MAX_PIXELS / 1e6}-megapixel limit: upload a downscaled copy of the film.`);
  }
  if (Math.min(width, height) < MIN_SIDE) {
    throw new UnreadableFilm(`${name}: ${size} is too small: the shorter side must be at least ${MIN_SIDE} px; ` +
      "upload the film at its original resolution.");
  }
  if (Math.max(width, height) > MAX_ASPECT_RATIO * Math.min(width, height)) {
    throw new UnreadableFilm(`${name}: ${size} is ${Math.round(Math.max(width, height) / Math.min(width, height))} ` +
      `times longer than wide, no chest film's shape (at most ${MAX_ASPECT_RATIO}:1): upload the whole film, uncropped.`);
  }
}

function pngHeader(bytes) {
  // width, height and bit depth from a PNG's IHDR chunk; null for another format.
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length < 29 || signature.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return { width: view.getUint32(16), height: view.getUint32(20), bitDepth: bytes[24] };
}

function fail(message) {
  throw new UnreadableFilm(message);
}

export async function decodeFilm(file, dicomParser) {
  // -> {rgba, grey}: the film's pixels as the server reads them (a DICOM's after its window).
  const head = new Uint8Array(await file.slice(0, 132).arrayBuffer());
  if (isDicom(head, file.name)) {
    const grey = readDicom(new Uint8Array(await file.arrayBuffer()), file.name, dicomParser, fail, checkLimits);
    const rgba = new Uint8ClampedArray(4 * grey.data.length);
    grey.data.forEach((v, i) => rgba.set([v, v, v, 255], 4 * i));
    return { rgba, grey };
  }
  const png = pngHeader(head);
  if (png) {
    checkLimits(file.name, png.width, png.height);
    if (png.bitDepth === 16) {
      throw new UnreadableFilm(`${file.name}: a 16-bit PNG, which the browser would cut to 8 bits its own way: ${SERVER_MODE}.`);
    }
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
      imageOrientation: "from-image" });
  } catch {
    throw new UnreadableFilm(`${file.name} is not a readable image: upload a PNG, JPEG or DICOM chest X-ray.`);
  }
  const { width, height } = bitmap;
  checkLimits(file.name, width, height);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
  if (!(head[0] === 0xff && head[1] === 0xd8)) {  // not a JPEG, so maybe transparent: such pixels lie on black
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
  }
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  return { rgba, grey: greyFromRGBA(rgba, width, height) };
}
