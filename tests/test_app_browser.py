"""The app in a real browser: headless Chromium (Debian's, installed by `make setup-browser`),
driven by Playwright, uploads an X-ray, waits for the bars and saves a screenshot."""
from __future__ import annotations

import pytest

import pneumonia
from tests.conftest import BUNDLED_MODEL, ROOT

pytestmark = pytest.mark.slow
SCREENSHOTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(90_000)
    yield page
    page.close()


def _served_p(image) -> float:
    """P(PNEUMONIA) from the backend the app serves by default (the bundled int8 ONNX model)."""
    return pneumonia.load_classifier(str(BUNDLED_MODEL), backend="auto").probabilities(pneumonia.open_image(image))["PNEUMONIA"]


def _verdict(page) -> str:
    """The decision's heading as the page shows it (the Markdown's "### NORMAL" is an <h3>)."""
    heading = page.locator("#verdict h3")
    heading.wait_for()
    return heading.inner_text().strip()


def test_upload_shows_bars_decision_and_heatmap(page, app_url, film, tmp_path):
    page.goto(app_url)
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    page.set_input_files("input[type=file]", str(junk))
    page.get_by_text("notes.png is not a readable image").first.wait_for()  # the message, in the page

    page.goto(app_url)  # a fresh page, as a user who tries again
    image = film("PNEUMONIA", 3)  # recorded P(PNEUMONIA) 0.997: above the PNEUMONIA cut-off (0.965)
    page.set_input_files("input[type=file]", str(image))
    bar = page.locator('[data-testid="PNEUMONIA-confidence-set"] meter')
    bar.wait_for()
    assert int(bar.get_attribute("aria-valuenow")) == round(100 * _served_p(image))
    assert page.locator('[data-testid="NORMAL-confidence-set"]').count() == 1
    assert _verdict(page) == "PNEUMONIA"
    page.get_by_text("is at or above the model's PNEUMONIA cut-off").first.wait_for()
    page.locator("#film img").wait_for()  # the film itself, beside...
    page.locator("#heatmap img").wait_for()  # ...the Grad-CAM overlay, which follows the answer
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "app-upload.png", full_page=True)
    assert (SCREENSHOTS / "app-upload.png").stat().st_size > 10_000


def test_a_bundled_example_is_one_click_away(page, app_url):
    page.goto(app_url)
    example = ROOT / "examples" / "NORMAL" / "IM-0001-0001.jpeg"  # recorded P(PNEUMONIA) 0.028 (cautioned as an adult's: still NORMAL)
    page.get_by_text(example.name).first.click()
    bar = page.locator('[data-testid="PNEUMONIA-confidence-set"] meter')
    bar.wait_for()
    assert int(bar.get_attribute("aria-valuenow")) == round(100 * _served_p(example))
    assert _verdict(page) == "NORMAL"
    page.locator("#film img").wait_for()


def test_a_photo_is_refused_in_the_page_with_no_bars(page, app_url, tmp_path):
    from PIL import Image
    from skimage import data as samples

    Image.fromarray(samples.chelsea()).save(tmp_path / "cat.jpg")
    page.goto(app_url)
    page.set_input_files("input[type=file]", str(tmp_path / "cat.jpg"))
    assert _verdict(page) == "NOT ASSESSED"
    page.get_by_text("This upload is not assessed: it is a colour image, not an X-ray (a photo?)").first.wait_for()
    page.locator("#film img").wait_for()  # the user sees what was refused
    assert page.locator('[data-testid="PNEUMONIA-confidence-set"]').count() == 0
    page.screenshot(path=SCREENSHOTS / "app-refused.png", full_page=True)


def test_a_side_view_and_a_ct_are_refused_and_an_adults_film_is_answered_under_a_caution(page, app_url, scope_set):
    def upload(folder: str) -> None:
        page.goto(app_url)
        page.set_input_files("input[type=file]", next(str(p) for p in scope_set.files if p.parent.name == folder))

    for folder, reason in (("lateral", "it looks like a side view (lateral) of the chest"),
                           ("ct", "it looks like a CT slice, not a plain X-ray film")):
        upload(folder)
        assert _verdict(page) == "NOT ASSESSED"
        page.get_by_text(f"This upload is not assessed: {reason}").first.wait_for()
        page.locator("#film img").wait_for()
        assert page.locator('[data-testid="PNEUMONIA-confidence-set"]').count() == 0
        assert page.locator("#heatmap img").count() == 0
    upload("adult_frontal")
    assert _verdict(page) in ("NORMAL", "PNEUMONIA")
    caution = page.get_by_text("Caution: this looks like an adult's chest film").first
    bar = page.locator('[data-testid="PNEUMONIA-confidence-set"] meter')
    bar.wait_for()
    assert caution.bounding_box()["y"] < bar.bounding_box()["y"]  # the caution stands above the bars
    page.locator("#heatmap img").wait_for()
    page.screenshot(path=SCREENSHOTS / "app-caution.png", full_page=True)
