"""What a model folder says about itself: config.json describes this model (not the ImageNet
checkpoint of its architecture), one licence, and a card whose results name their data and source."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUNDLED_MODEL
from train.export.folder import LICENSE, OWN_PRETRAINED_CFG

STALE = {"tag", "test_input_size", "test_crop_pct", "paper_ids", "paper_name", "origin_url", "hf_hub_id", "url",
         "notes", "pool_size"}


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


@pytest.mark.parametrize("which", ["bundled", pytest.param("trained", marks=pytest.mark.slow)])
def test_config_json_describes_this_model_with_one_licence(which, request):
    folder = BUNDLED_MODEL if which == "bundled" else request.getfixturevalue("trained_model")
    config = json.loads((folder / "config.json").read_text())
    pretrained = config["pretrained_cfg"]
    assert not STALE & set(pretrained) and set(pretrained) <= {*OWN_PRETRAINED_CFG, "license"}
    assert pretrained["input_size"][-1] == json.loads((folder / "training_config.json").read_text())["image_size"]
    assert "num_classes" not in config["model_args"]  # transformers passes it twice otherwise
    assert pretrained["license"] == LICENSE == _front_matter((folder / "README.md").read_text())["license"]


def test_the_card_names_its_dataset_by_hub_id_and_each_result_its_source(tmp_path):
    from train.export.card import write_card

    folder = Path(shutil.copytree(BUNDLED_MODEL, tmp_path / BUNDLED_MODEL.name))
    write_card(folder, repo_id="someone/pneumonia-cnn")
    results = _front_matter((folder / "README.md").read_text())["model-index"][0]["results"]
    official = [r for r in results if r["dataset"]["split"] == "test" and r["dataset"]["type"].endswith("chest-xray-pneumonia")]
    assert official and official[0]["dataset"]["type"] == "someone/chest-xray-pneumonia"
    assert all(r["source"]["url"] == "https://huggingface.co/someone/pneumonia-cnn/blob/main/metrics.json" for r in results)
