"""The suite's own rules: on CI nothing is skipped; on a user's machine the data tests skip, saying why."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DATA, LABELS, ROOT

# The data README's counts: 5216 training and 624 test films.
FILMS = {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}


def test_the_real_films_are_all_there(data_dir, scope_set):
    assert {key: len(list(data_dir.joinpath(*key).iterdir())) for key in FILMS} == FILMS
    assert len(scope_set.files) == 602 and all(path.is_file() for path in scope_set.files)  # the scope README's count


def _pytest(*args: str, ci: bool, data: Path, scope: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PNEUMONIA_TEST_SCOPE")}
    env |= {"PNEUMONIA_TEST_DATA": str(data), **({"CI": "true"} if ci else {})}
    env |= {"PNEUMONIA_TEST_SCOPE": str(scope)} if scope else {}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_without_the_data_ci_stops_with_one_message_and_a_user_run_skips_saying_where_it_looked(tmp_path):
    target = "tests/test_ci_rules.py::test_the_real_films_are_all_there"
    nowhere = tmp_path / "nowhere"
    ci = _pytest(target, ci=True, data=DATA, scope=nowhere)  # the scope images are required on CI too
    assert ci.returncode == 3 and "the scope images were not found at" in ci.stdout + ci.stderr
    user = _pytest(target, ci=False, data=nowhere)
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout[-2000:]
    assert f"real chest X-rays not found at {nowhere} (train/NORMAL/ is missing or empty)" in user.stdout
    ci = _pytest(target, ci=True, data=nowhere)
    output = ci.stdout + ci.stderr
    assert ci.returncode == 3 and "CI needs the whole suite, and real chest X-rays not found at" in output, output[-2000:]
    assert "passed" not in output and "skipped" not in output


def test_on_ci_any_skip_is_a_failure(tmp_path):
    data, scope = tmp_path / "data", tmp_path / "scope"  # stand-ins, so that only the skip below is in question
    for split in ("train", "test"):
        for label in LABELS:
            (data / split / label).mkdir(parents=True)
            (data / split / label / "film.png").write_bytes(b"")
    scope.mkdir()
    (scope / "provenance.csv").write_text("file,category,repo,commit,path,blob,licence,label\n")
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_needs_a_widget():\n    pytest.skip('no widget here')\n")
    args = ("-p", "tests.conftest", "--rootdir", str(tmp_path), str(tmp_path / "test_skips.py"))
    user = _pytest(*args, ci=False, data=data, scope=scope)
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout[-2000:]
    ci = _pytest(*args, ci=True, data=data, scope=scope)
    assert ci.returncode == 1 and "1 failed" in ci.stdout, ci.stdout[-2000:]
    assert "skipped on CI, where every test must run: Skipped: no widget here" in ci.stdout
