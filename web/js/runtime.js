// The page's two npm packages, pinned: ONNX Runtime Web (the model) and dicom-parser (DICOM files).
// Each file is the one web/package-lock.json pins, fetched from the app's own copy (web/vendor/,
// built by `make web`) when it has one, else from jsDelivr, and always checked against its
// Subresource Integrity hash, so a changed file is refused. Everything is fetched before the first
// film is read: reading a film fetches nothing. tests/test_private_mode.py checks these hashes
// against the installed packages.

export const PINNED = {
  "onnxruntime-web": { version: "1.31.1", files: {
    "ort.wasm.bundle.min.mjs": "sha384-6BIdAwCg9wGA2hDYLN3zCVAyr+OTK4s2qFUOqXyyOMHOmbTE+W9CyVIpApOKhHN8",
    "ort-wasm-simd-threaded.wasm": "sha384-bQJgW/bZhNOlc9KU45Zu0dyd0EFfNpkOZjfHyH/90dkZQSBBGkFTsAJaabSyYA4Z",
  } },
  "dicom-parser": { version: "1.8.21", files: {
    "dicomParser.min.js": "sha384-Z8ua3fbU1i9fPqw0gGLF0aw6yqnTK3GO6R9CFvnlvXB0x0AIFi6JqYvQ6v+s9kuw",
  } },
};

async function fetchPinned(pkg, name) {
  const { version, files } = PINNED[pkg];
  const problems = [];
  for (const url of [new URL(`vendor/${name}`, document.baseURI).href, `https://cdn.jsdelivr.net/npm/${pkg}@${version}/dist/${name}`]) {
    try {
      const response = await fetch(url, { integrity: files[name], cache: "force-cache" });
      if (response.ok) return { bytes: await response.arrayBuffer(), url };
      problems.push(`${url}: HTTP ${response.status}`);
    } catch (err) {
      problems.push(`${url}: ${err.message}`);
    }
  }
  throw new Error(`${pkg} ${version} could not be loaded (${problems.join("; ")}). Run \`make web\` beside the ` +
    "app, or allow cdn.jsdelivr.net; the server mode (the first tab) still works.");
}

function blobUrl(bytes) {
  return URL.createObjectURL(new Blob([bytes], { type: "text/javascript" }));
}

export async function loadOnnxRuntime() {
  const [script, wasm] = await Promise.all(Object.keys(PINNED["onnxruntime-web"].files).map((name) => fetchPinned("onnxruntime-web", name)));
  const ort = await import(blobUrl(script.bytes));
  ort.env.wasm.wasmBinary = wasm.bytes;  // no fetch of its own
  ort.env.wasm.numThreads = 1;  // no workers: they need cross-origin isolation, which a Space lacks
  ort.env.wasm.proxy = false;
  return { ort, from: [script.url, wasm.url] };
}

export async function loadDicomParser() {
  // A UMD script: run as a classic script, it leaves window.dicomParser.
  const script = await fetchPinned("dicom-parser", "dicomParser.min.js");
  const element = document.createElement("script");
  element.src = blobUrl(script.bytes);
  await new Promise((resolve, reject) => {
    element.onload = resolve;
    element.onerror = () => reject(new Error("dicom-parser did not run"));
    document.head.append(element);
  });
  return { dicomParser: window.dicomParser, from: [script.url] };
}
