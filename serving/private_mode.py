"""The app's private mode, server side: it only serves files. The page (``web/``) runs the folder's
compact ONNX model (int8, else fp16 weights), the gate and the outcome rules in the visitor's
browser, so a film never reaches the server.

``routes(classifier)`` serves the page at ``/private/`` and, at ``/private/model/``, the only files
it reads: the folder's ``config.json``, its compact ONNX model (as ``browser.onnx``), that model's
gate file and the outcome words (``words.json``, from ``pneumonia.words.browser_templates``). See
docs/private-mode.md.
"""
from __future__ import annotations

from pathlib import Path

from pneumonia import words
from pneumonia.backends import COMPACT, ONNX_FILES
from pneumonia.modeling import Classifier, gate_settings, model_file
from pneumonia.ood import GATE_FILE

WEB = Path(__file__).resolve().parents[1] / "web"
BROWSER_FILE = "browser.onnx"  # the page's name for the compact file it is served


def available(classifier: Classifier) -> bool:
    """The private mode runs what the server's compact backend runs; a folder without one has no private mode."""
    return classifier.backend in COMPACT


def frame(classifier: Classifier) -> str:
    """The tab's content: the page in an iframe (relative, so it works under a proxy's root path)."""
    if not available(classifier):
        return ("<p>The private mode needs the model folder's compact ONNX file (<code>model.int8.onnx</code> or "
                "<code>model.fp16.onnx</code>) and the app serving it: export it with <code>python -m train.export "
                "FOLDER</code> and run the app with <code>PNEUMONIA_BACKEND=auto</code>.</p>")
    return ('<iframe src="private/" title="Private mode: the film is classified in your browser" '
            'style="width: 100%; height: 1000px; border: 0"></iframe>')


def routes(classifier: Classifier) -> list:
    """Starlette routes for ``demo.launch(app_kwargs={"routes": ...})``; none without a compact model."""
    from starlette.applications import Starlette
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    if not available(classifier):
        return []
    gate = gate_settings(classifier.config, classifier.backend)  # the served backend's own gate, as the server reads it
    names = ["config.json"] + ([gate.get("file", GATE_FILE)] if gate else [])
    served = {name: model_file(classifier.source, name) for name in names}
    served[BROWSER_FILE] = model_file(classifier.source, ONNX_FILES[classifier.backend])
    templates = words.browser_templates(classifier)

    async def serve_model_file(request):
        name = request.path_params["name"]
        if name == "words.json":
            return JSONResponse(templates)
        if served.get(name) is None:
            return PlainTextResponse(f"{name} is not a file the private mode serves", status_code=404)
        return FileResponse(served[name])

    page = Starlette(routes=[Route("/model/{name}", serve_model_file), Mount("/", StaticFiles(directory=WEB, html=True))])
    # gzip level 6: the runtime's wasm goes from 14.8 to 3.8 MB, in about half the time level 9 takes
    return [Mount("/private", app=GZipMiddleware(page, compresslevel=6), name="private")]
