"""Model cards, the comparison table and pushes to the Hub, offline.

The Hub client is replaced only at its network boundary: HfApi.create_repo and
HfApi.upload_folder record their calls instead of sending them, and the Space's variable goes
through huggingface_hub's own HTTP client, whose transport answers here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard, constants
from huggingface_hub.utils import filter_repo_objects

from dataset_script.build_dataset import main as build_dataset
from pneumonia.presets import UsageError
from tests.conftest import lay_into_hub_cache, link_subset, run_cli
from train.evaluate.compare import comparison_table
from train.evaluate.compare import main as compare_main
from train.publish.hub import set_space_variable
from train.publish.model import MODEL_FILES, publish
from train.publish.model import main as publish_main

TOKEN = "hf_testtoken_never_printed"


@pytest.fixture(scope="module")
def run_folder(trained_model, tmp_path_factory):
    """A copy of the session's trained model (with its ONNX files and gate): publishing re-renders its card."""
    return Path(shutil.copytree(trained_model, tmp_path_factory.mktemp("runs") / "cnn"))


@pytest.fixture
def hub(monkeypatch):
    """Online with a token, every request recorded instead of sent."""
    calls = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw["repo_id"], kw)))
    return calls


@pytest.fixture
def hub_http(monkeypatch):
    """huggingface_hub's HTTP requests to Spaces, kept and answered here (status 200 unless a test
    says otherwise)."""
    sent, answer = [], {"status": 200}

    def respond(request: httpx2.Request) -> httpx2.Response:
        if not request.url.path.startswith("/api/spaces/"):  # the client's own lookups (agent harnesses)
            return httpx2.Response(200, json=[])
        sent.append(request)
        body = json.loads(request.content or b"{}")
        return httpx2.Response(answer["status"], json={body.get("key", "x"): {"value": body.get("value")}}
                               if answer["status"] == 200 else {"error": "Forbidden"})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(respond)))
    yield sent, answer
    huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


def test_a_space_is_pointed_at_the_pushed_model_through_its_variable(hub_http, capsys):
    sent, answer = hub_http
    set_space_variable("someone/demo", "PNEUMONIA_MODEL", "hf-hub:someone/pneumonia-vgg16", description="why")
    (request,) = sent
    assert (request.method, str(request.url)) == ("POST", "https://huggingface.co/api/spaces/someone/demo/variables")
    assert json.loads(request.content) == {"key": "PNEUMONIA_MODEL", "value": "hf-hub:someone/pneumonia-vgg16",
                                           "description": "why"}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    set_space_variable("someone/demo", "PNEUMONIA_MODEL", "hf-hub:x/y", description="why", dry_run=True)
    assert len(sent) == 1 and "would set PNEUMONIA_MODEL=hf-hub:x/y" in capsys.readouterr().out
    answer["status"] = 403
    with pytest.raises(UsageError, match="the model is pushed; set PNEUMONIA_MODEL=hf-hub:x/y by hand") as err:
        set_space_variable("someone/demo", "PNEUMONIA_MODEL", "hf-hub:x/y", description="why")
    assert TOKEN not in str(err.value) and "\n" not in str(err.value)


def _uploaded(folder, patterns) -> set[str]:
    files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return set(filter_repo_objects(files, allow_patterns=patterns))


@pytest.mark.slow
def test_every_run_gets_a_card_whose_model_index_holds_its_test_metrics(run_folder):
    card = ModelCard.load(run_folder / "README.md")
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert card.data.license and card.data.datasets and card.data.base_model is None  # from scratch
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {k: metrics["test"][k] for k in ("f1", "precision", "recall", "specificity", "accuracy", "roc_auc")}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    for plot in ("confusion_matrix.png", "roc_curve.png"):
        assert (run_folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({plot})" in card.text
    assert "not a diagnosis" in card.text and "Kermany" in card.text and "hf-hub:USER/pneumonia-cnn" in card.text
    assert f"{metrics['validation']['f1']:.3f}" in card.text  # validation numbers in the text
    assert "## What it judges: the out-of-distribution gate" in card.text and f"{metrics['ood']['splits']['test']['films']} |" in card.text
    lateral = metrics["ood"]["scope"]["leave_one_dataset_out"]["lateral"]  # the table per scope category
    assert f"| lateral | {lateral['images']} | {100 * lateral['refused']:.1f}% (" in card.text


@pytest.mark.slow
def test_publish_uploads_exactly_the_model_files(run_folder, hub, capsys):
    publish(run_folder, "someone/pneumonia-cnn", private=True)
    (create, repo_id, create_kw), (upload, upload_repo, upload_kw) = hub
    assert (create, repo_id, create_kw["exist_ok"], create_kw["private"]) == ("create_repo", "someone/pneumonia-cnn", True, True)
    assert (upload, upload_repo, upload_kw["repo_type"]) == ("upload_folder", "someone/pneumonia-cnn", "model")
    sent = _uploaded(run_folder, upload_kw["allow_patterns"])
    exported = {path.name for path in run_folder.glob("*.onnx")}  # training exports them by default
    gates = {path.name for path in run_folder.glob("ood*.safetensors")}  # the gate, and int8's own calibration
    plots = {"risk_coverage.png"}  # the card's plot of the uncertain band, which training chose
    assert "model.onnx" in exported and "ood.safetensors" in gates and sent == set(MODEL_FILES) | exported | gates | plots
    assert not any(name.startswith("checkpoints") for name in sent)
    assert "hf-hub:someone/pneumonia-cnn" in (run_folder / "README.md").read_text()
    assert TOKEN not in capsys.readouterr().out


@pytest.mark.slow
def test_publish_with_a_space_sets_its_model_variable_after_the_push(run_folder, hub, hub_http):
    sent, _ = hub_http
    publish_main([str(run_folder), "--repo-id", "someone/pneumonia-vgg16", "--space-id", "someone/demo"])
    assert [call[0] for call in hub] == ["create_repo", "upload_folder"]
    (request,) = sent
    assert str(request.url).endswith("/api/spaces/someone/demo/variables")
    assert json.loads(request.content)["value"] == "hf-hub:someone/pneumonia-vgg16"
    assert "someone/demo" in (run_folder / "README.md").read_text()  # the card's gradio_client lines


@pytest.mark.slow
def test_dry_run_lists_files_and_sends_nothing(run_folder, hub, capsys):
    publish_main([str(run_folder), "--repo-id", "someone/pneumonia-cnn", "--dry-run"])
    out = capsys.readouterr().out
    assert hub == [] and "https://huggingface.co/someone/pneumonia-cnn" in out
    assert "model.safetensors" in out and "checkpoints" not in out


@pytest.mark.slow
def test_push_refuses_offline_tokenless_or_incomplete(run_folder, hub, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE"):
        publish(run_folder, "someone/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UsageError, match="hf auth login"):
        publish(run_folder, "someone/x")
    partial = tmp_path / "partial"
    shutil.copytree(run_folder, partial, ignore=shutil.ignore_patterns("model.safetensors"))
    with pytest.raises(UsageError, match="missing model.safetensors"):
        publish(partial, "someone/x")
    assert hub == []


@pytest.mark.slow
def test_a_failing_upload_is_one_clear_line(run_folder, hub, monkeypatch):
    def refuse(self, **kw):
        raise ConnectionError(f"403 Forbidden for token {TOKEN[:3]}...\nmore detail")
    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    with pytest.raises(UsageError, match="pushing to someone/x failed .*nothing was committed") as err:
        publish(run_folder, "someone/x")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_compare_tables_several_runs(run_folder, tmp_path, capsys):
    other = tmp_path / "cnn-copy"
    shutil.copytree(run_folder, other)
    metrics = json.loads((run_folder / "metrics.json").read_text())
    compare_main([str(run_folder), str(other), "--output", str(tmp_path / "comparison.md")])
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "comparison.md").read_text() == comparison_table([run_folder, other])
    rows = printed.strip().splitlines()[2:]
    assert len(rows) == 2 and all(f"| {metrics['test']['f1']:.3f} |" in row for row in rows)


def test_dataset_card_and_push(data_dir, tmp_path, hub):
    source = link_subset(data_dir, tmp_path / "kaggle", per_class=8)
    build_dataset([str(source), str(tmp_path / "out"), "--val-fraction", "0.25", "--push-to-hub", "someone/cxr"])
    card = DatasetCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.task_categories == ["image-classification"]
    sizes = {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]}
    assert sizes["test"] == 16 and sizes["train"] + sizes["validation"] == 16
    assert "Known issues" in card.text and "Kermany" in card.text and 'load_dataset("someone/cxr")' in card.text
    (_, _, create_kw), (_, repo_id, upload_kw) = hub
    assert create_kw["repo_type"] == upload_kw["repo_type"] == "dataset" and repo_id == "someone/cxr"
    assert _uploaded(tmp_path / "out", upload_kw["allow_patterns"]) == {
        "README.md", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet"}


@pytest.mark.slow
def test_what_users_download_gives_the_training_probabilities(run_folder, hub, data_dir, monkeypatch):
    """Publish, lay exactly the uploaded files into the Hub cache, load them with hf-hub: offline."""
    import csv

    import pneumonia

    publish(run_folder, "someone/pneumonia-cnn-roundtrip")
    sent = _uploaded(run_folder, hub[-1][2]["allow_patterns"])
    lay_into_hub_cache(Path(constants.HF_HUB_CACHE), "someone/pneumonia-cnn-roundtrip", run_folder, sent)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    classifier = pneumonia.load_classifier("hf-hub:someone/pneumonia-cnn-roundtrip")
    with (run_folder / "predictions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    p = classifier.predict_proba([pneumonia.open_image(data_dir / "test" / r["label"] / r["file"]) for r in rows])[:, 1]
    assert p.tolist() == pytest.approx([float(r["p_pneumonia"]) for r in rows], abs=1e-5)
    assert classifier.gate is not None and classifier.gate.cutoff == json.loads((run_folder / "config.json").read_text())["ood"]["cutoff"]


@pytest.mark.slow
def test_training_with_push_to_hub(data_dir, small_scope, tmp_path, hub):
    from train.run import main as train_main

    offline = run_cli("--dataset", str(data_dir), "--output-dir", str(tmp_path / "never"), "--push-to-hub", "someone/x")
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr and not (tmp_path / "never").exists()

    train_main(["--model", "cnn", "--dataset", str(data_dir), "--output-dir", str(tmp_path / "run"), "--epochs", "1",
                "--max-train-samples", "16", "--max-eval-samples", "16", "--batch-size", "8", "--num-workers", "0",
                "--image-size", "64", "--push-to-hub", "someone/pneumonia-cnn", "--hub-private",
                "--scope-data", str(small_scope)])
    (_, repo_id, create_kw), (_, _, upload_kw) = hub
    assert repo_id == "someone/pneumonia-cnn" and create_kw["private"] is True
    exported = {path.name for path in (tmp_path / "run").glob("*.onnx")}
    gates = {path.name for path in (tmp_path / "run").glob("ood*.safetensors")}
    assert _uploaded(tmp_path / "run", upload_kw["allow_patterns"]) == set(MODEL_FILES) | exported | gates | {"risk_coverage.png"}
