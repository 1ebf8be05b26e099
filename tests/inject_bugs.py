"""Inject the bugs the suite must catch, one at a time, into a copy of this checkout, and list
the tests that fail for each (a bug no test fails on is a hole in the suite).

    .venv/bin/python tests/inject_bugs.py                          # every bug, fast tier (make test-fast)
    .venv/bin/python tests/inject_bugs.py --tier slow --only flipped-verdict
    .venv/bin/python tests/inject_bugs.py --only dead-optimizer -- tests/test_train_cli.py

Each bug is one textual change to one file. If its text is no longer there, the script stops
and says so: the code moved on, and the bug must be rewritten to match it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import DATA, SCOPE  # noqa: E402  (the copy reads the real X-rays from where this checkout does)

# name: (file, text, replacement, what a user would meet)
BUGS = {
    "flipped-verdict": ("pneumonia/modeling.py", "decision = POSITIVE_LABEL if side == PNEUMONIA else",
                        "decision = POSITIVE_LABEL if side != PNEUMONIA else", "every NORMAL film reads PNEUMONIA and the reverse"),
    "dropped-equalisation": ("pneumonia/pixels.py", "    image = standardise_intensity(image, intensity)\n", "",
                             "inputs skip the histogram equalisation the model was trained with"),
    "dropped-border-crop": ("pneumonia/pixels.py", "    if crop:\n", "    if False:\n",
                            "a model trained with --crop-borders never has its margins cropped"),
    "no-temperature": ("pneumonia/modeling.py", "scaled = np.asarray(logits, dtype=np.float64) / temperature",
                       "scaled = np.asarray(logits, dtype=np.float64)", "probabilities are not calibrated"),
    "dead-optimizer": ("train/run.py", "            optimizer.step()\n", "            pass  # optimizer.step()\n",
                       "training runs, records metrics and learns nothing"),
    "open-gate": ("pneumonia/modeling.py", "image_verdict(image) or verdict for", "image_verdict(image) or Verdict() for",
                  "CT slices, side views and grey photos get a diagnosis"),
    "swapped-labels": ("pneumonia/modeling.py", 'label_names=tuple(config.get("label_names") or LABEL_NAMES)',
                       'label_names=tuple(reversed(config.get("label_names") or LABEL_NAMES))',
                       "the probabilities are shown under each other's names"),
    "heat-map-of-normal": ("pneumonia/gradcam.py", "label: str = POSITIVE_LABEL", 'label: str = "NORMAL"',
                           "the heat map shows what argues for NORMAL"),
    "no-uncertain-band": ("pneumonia/answering.py", "side = np.full(p.shape, UNCERTAIN)", "side = (p >= 0.5).astype(int)",
                          "a film between the two cut-offs gets a decision anyway"),
    "symmetric-old-band": ("pneumonia/answering.py", 'if config.get("answer_cutoffs"):', "if False:",
                           "the folder's two cut-offs are ignored for a band around the threshold"),
    "coarse-heat-map": ("pneumonia/gradcam.py", 'METHOD = "layercam"', 'METHOD = "gradcam"',
                        "the heat map is Grad-CAM again, one coarse blob per film"),
    "browser-bicubic": ("web/js/pixels.js", "const a = -0.5;", "const a = -0.75;",
                        "the private mode resizes with another cubic (as a canvas might) and its answers drift"),
    "browser-no-band": ("web/js/reading.js", 'if (outcome !== "refuse" && side === null) outcome = "uncertain";',
                        'if (outcome !== "refuse" && side === null) outcome = "answer";',
                        "the private mode gives a decision where the server says uncertain"),
    "browser-bars-on-refusal": ("web/js/main.js", 'if (found.probabilities && found.outcome !== "refuse")',
                                "if (found.probabilities)", "the private mode shows probability bars on a refused image"),
    "private-mode-uploads": ("web/js/main.js", "const film = await decodeFilm(file, model.dicomParser);",
                             'const film = await decodeFilm(file, model.dicomParser); fetch("model/x", { method: "POST", body: file });',
                             "the private mode sends the film to the server"),
    "unbounded-sessions": ("app.py", "state_session_capacity=SESSIONS_KEPT, ", "",
                           "a Space keeps every API call's session and grows by about 45 KB a call"),
    "import-circle": ("train/gate/fit.py", "from train.sweep import Outputs\n",
                      "from train.sweep import Outputs\nfrom train import post_training  # noqa: F401\n",
                      "two modules import each other: which one loads first decides what the other sees"),
    "upward-import": ("pneumonia/training_transform.py", "    from torch import nn\n", "    from torch import nn\n\n    from train.augment import Augment  # noqa: F401\n",
                      "the installed package names training's code, which the wheel does not ship"),
    "log-every-read": ("train/data.py", "if problem and problem not in _LOGGED:", "if problem:",
                       "an unreadable image is logged again at every epoch, draw and model that reads it"),
    "batch-norm-trains": ("train/optim.py", "    if freeze_bn:\n", "    if False:\n",
                          "fine-tuning the TFLite weights re-normalises by batch statistics and undoes ImageNet's features"),
    "one-learning-rate": ("train/optim.py", "    if config.layer_decay < 1:\n", "    if False:\n",
                          "--layer-decay is accepted and every layer trains at the head's rate"),
    "imagenet-scaling-on-tflite": ("train/run.py", "normalization=tflite_weights.NORMALIZATION)", ")",
                                   "the TFLite weights are fed ImageNet mean/std pixels instead of the [-1, 1] they learned on"),
    "int8-weights-one-scale": ("train/export/onnx.py", "scale = np.abs(w).max(axis=reduce) / 127.0",
                               "scale = np.full(w.shape[axis], np.abs(w).max() / 127.0)",
                               "int8 weights share one scale per tensor, and small channels round to zero"),
    "no-int8-fallback": ("train/post_training.py", '            if not result["int8"]["kept"]:\n', "            if False:\n",
                         "a static int8 that misses the bar leaves fp32 alone; int8 weights are never tried"),
    "adult-head-ignores-shifted-children": ("train/gate/scope.py", 'if options[head]["children"] == "augmented" else',
                                            "if True else", "the adult check cautions children's films that another "
                                            "site's scanner made darker or blurrier"),
    "leave-one-repository-out": ("train/gate/scope.py", 'np.array([row["dataset"] for row in rows]', 'np.array([row["repo"] for row in rows]',
                                 "the gate's figures hold out a repository while the same data set stays in through another"),
    "adult-refused-as-unlike": ("pneumonia/ood.py", '"adult" if adult else "unlike"', '"unlike"',
                                "an adult's film is refused as unlike any X-ray, not as an adult's"),
    "space-ignores-its-vgg16": ("serving/model_choice.py", '        _check_size(own.removeprefix("hf-hub:"))\n',
                                '        raise RuntimeError("not tried")\n',
                                "a Space serves the bundled model although its author pushed a VGG16"),
    "upload-decoded-per-event": ("serving/uploads.py", "            if entry.found is None:\n", "            if True:\n",
                                 "each handler decodes the upload again: a full-resolution DICOM up to five times a request"),
    "upload-kept-by-name": ("serving/uploads.py", "key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)",
                            "key = (os.path.realpath(path),)",
                            "a film replaced under the same name gets the answer of the film before it"),
    "app-works-at-import": ("app.py", 'log = logging.getLogger("app")',
                            'gradio_fixes.read_batched_verdicts()\nlog = logging.getLogger("app")',
                            "importing app.py changes Gradio for every other app in the process"),
    "space-fallback-unsaid": ("app.py", 'why = f"**{note}**\\n\\n" if note else ""', 'why = ""',
                              "a Space serves the bundled model and its page does not say why"),
    "doc-points-nowhere": ("docs/publish.md", "(../BENCHMARKS.md#vgg16-served)", "(../BENCHMARKS.md#vgg16-serving)",
                           "a reader follows a link to a heading that is not there"),
    "whitening-cholesky-only": ("pneumonia/ood.py", "    except np.linalg.LinAlgError:\n", "    except ZeroDivisionError:\n",
                                "fitting VGG16's gate stops training with 'Matrix is not positive definite'"),
    "ci-skips-quietly": ("tests/conftest.py", 'ON_CI = os.environ.get("CI", "")', 'ON_CI = False and os.environ.get("CI", "")',
                         "CI passes with the data folder missing"),
}
TIERS = {"fast": ["-m", "not slow"], "slow": ["-m", "slow"], "all": []}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".pytest_cache", "__pycache__", "runs", "test-artifacts", "checkpoints",
                                     "node_modules")


def copy_with_bug(name: str, target: Path) -> Path:
    """The checkout as it is on disk (uncommitted changes included), with one bug in it."""
    shutil.copytree(ROOT, target, ignore=COPY_IGNORE, symlinks=True)
    (target / ".venv").symlink_to(ROOT / ".venv")
    if (ROOT / "web" / "node_modules").is_dir():  # `make web`'s npm install (150 MB)
        (target / "web" / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    (target.parent / "shared").symlink_to(ROOT.parent / "shared")  # ../shared beside the copy, as beside this checkout
    file, text, replacement, _ = BUGS[name]
    source = (target / file).read_text()
    if source.count(text) != 1:
        raise SystemExit(f"error: bug {name}: {file} holds {source.count(text)} copies of {text!r}, not 1; rewrite the bug")
    (target / file).write_text(source.replace(text, replacement))
    return target


def failing_tests(copy: Path, tier: str, extra: list[str]) -> tuple[list[str], str]:
    """The tests that fail (or error) in ``copy``, and pytest's last line."""
    env = {**os.environ, "PNEUMONIA_TEST_DATA": str(DATA), "PNEUMONIA_TEST_SCOPE": str(SCOPE)}
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                             *TIERS[tier], *extra], cwd=copy, env=env, capture_output=True, text=True)
    lines = result.stdout.splitlines()
    failed = sorted({re.sub(r" - .*", "", line.split(" ", 1)[1]) for line in lines if line.startswith(("FAILED ", "ERROR "))})
    if result.returncode not in (0, 1):  # a run that stopped: that is caught too, by the whole run
        failed.append(f"(the run stopped, exit {result.returncode})")
    return failed, lines[-1] if lines else result.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=TIERS, default="fast")
    parser.add_argument("--only", nargs="+", choices=BUGS, default=list(BUGS))
    parser.add_argument("pytest_args", nargs="*", help="after --: which tests to run (default: the tier's)")
    args = parser.parse_args()
    print(f"| bug | what a user meets | tests that fail ({args.tier} tier) | pytest's summary |\n|---|---|---|---|")
    for name in args.only:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix=f"bug-{name}-") as tmp:
            failed, summary = failing_tests(copy_with_bug(name, Path(tmp) / "main"), args.tier, args.pytest_args)
        caught = "<br>".join(f"`{test}`" for test in failed) or "**none: not caught**"
        print(f"| {name} | {BUGS[name][3]} | {caught} | {summary.strip('= ')} ({time.time() - started:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
