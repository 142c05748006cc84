"""The interactive report in a real headless Chromium (Selenium 4, Debian's chromium, chromedriver).

Skipped only when the browser is absent and ``STEM2EDS_REQUIRE_BROWSER`` is
unset; CI (``.ci/run``) sets it, so there a missing browser fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from builders import make_report_run
from stem2eds.report import write_report
from stem2eds.report.interactive import MAX_CELL, quantise_patterns, sample_grid


def _browser() -> tuple[str, str] | None:
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _driver():
    found = _browser()
    if found is None:
        if os.environ.get("STEM2EDS_REQUIRE_BROWSER"):
            pytest.fail("STEM2EDS_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
        pytest.skip("chromium and chromedriver are not installed; the interactive report "
                    "is not checked in a browser (set STEM2EDS_REQUIRE_BROWSER to fail instead)")
    if not os.environ.get("STEM2EDS_REQUIRE_BROWSER"):
        pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1400,1800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=options)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(driver, maps written, report path) of one report opened from disk."""
    run = tmp_path_factory.mktemp("browser") / "run"
    run.mkdir()
    maps = make_report_run(run)
    report = write_report(run)
    driver = _driver()
    try:
        driver.get(report.as_uri())
        yield driver, maps, report
    finally:
        driver.quit()


def _wait(driver, script: str, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))


def _click(driver, canvas, row: int, col: int, shape: tuple[int, int]) -> None:
    """Click the centre of map position (row, col) on a map canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script("var r = arguments[0].getBoundingClientRect();"
                                 "return [r.width, r.height];", canvas)
    x = (col + 0.5) / shape[1] * rect[0] - rect[0] / 2
    y = (row + 0.5) / shape[0] * rect[1] - rect[1] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(round(x)),
                                                     int(round(y))).click().perform()


def _expected_cell(maps, row: int, col: int) -> np.ndarray:
    """The 8-bit pattern the sprite holds for map position (row, col) of the cropped grid."""
    r0, _, c0, _ = maps["crop"]
    shape = maps["measured"].shape[1:]
    rows, cols = sample_grid(shape)
    picked = np.stack([maps["patterns"][r + r0, c + c0] for r in rows for c in cols])
    cells, _ = quantise_patterns(picked, 1)
    assert cells.shape[-1] <= MAX_CELL
    return cells[rows.index(row) * len(cols) + cols.index(col)]


def test_report_opens_without_console_errors(page):
    driver, maps, report = page
    _wait(driver, "return document.querySelector('canvas.s2e-pattern')"
                  ".dataset.drawn === '1'")
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network
    # the maps lead: the explorer comes before the tables
    assert text.index("id='explorer'") < text.index("<h2>Settings</h2>")


def test_click_shows_that_positions_pattern_and_composition(page):
    driver, maps, _ = page
    shape = maps["measured"].shape[1:]
    rows, cols = sample_grid(shape)
    row, col = rows[-1], cols[1]
    canvas = driver.find_element("css selector", "canvas.s2e-measured, canvas.s2e-navigator")
    _click(driver, canvas, row, col, shape)
    box = driver.find_element("css selector", ".s2e-scan")
    assert (box.get_attribute("data-row"), box.get_attribute("data-col")) == (str(row), str(col))
    pattern = driver.find_element("css selector", "canvas.s2e-pattern")
    assert (pattern.get_attribute("data-scan-row"),
            pattern.get_attribute("data-scan-col")) == (str(row), str(col))
    _wait(driver, "return document.querySelector('canvas.s2e-pattern').dataset.drawn === '1'")
    # the drawn pixels are the sprite cell of that position (sampled at each cell's centre)
    zoom = int(pattern.get_attribute("data-zoom"))
    drawn = np.array(driver.execute_script(
        "var c = arguments[0], z = arguments[1], n = c.width / z, out = [];"
        "var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "for (var i = 0; i < n; i++) for (var j = 0; j < n; j++)"
        "  out.push(d[4 * ((i * z + (z >> 1)) * c.width + j * z + (z >> 1))]);"
        "return out;", pattern, zoom), float)
    expected = _expected_cell(maps, row, col).astype(float)
    assert drawn.size == expected.size
    assert np.abs(drawn - expected.ravel()).max() <= 2
    # another position has a different pattern: the comparison can fail
    assert np.abs(drawn - _expected_cell(maps, rows[0], cols[0]).ravel()).max() > 10
    # the readout shows the stored values of that position
    for k, el in enumerate(("Ge", "Sb", "Te")):
        tr = driver.find_element("css selector", f"tr[data-element='{el}']")
        for cls, stored in (("s2e-predicted", maps["calibrated"]),
                            ("s2e-measured", maps["measured"]), ("s2e-std", maps["std"])):
            cell = tr.find_element("css selector", f"td.{cls}")
            value = float(cell.get_attribute("data-value"))
            span = float(stored[k].max() - stored[k].min())
            assert abs(value - stored[k, row, col]) <= span / 65534 + 1e-7, (el, cls)
            assert cell.text == f"{100 * stored[k, row, col]:.2f}" or \
                abs(float(cell.text) - 100 * stored[k, row, col]) <= 0.01
    ood = driver.find_element("css selector", "tr[data-score='OOD score'] td.s2e-score")
    assert abs(float(ood.get_attribute("data-value")) - maps["ood"][row, col]) < 1e-3
    cryst = driver.find_element("css selector", "tr[data-score='crystallinity'] td.s2e-score")
    assert abs(float(cryst.get_attribute("data-value")) - maps["crystallinity"][row, col]) < 1e-3


def test_predicted_map_click_and_arrow_keys_move_the_marker(page):
    from selenium.webdriver.common.keys import Keys

    driver, maps, _ = page
    shape = maps["measured"].shape[1:]
    canvas = driver.find_element("css selector", "canvas.s2e-predicted")
    _click(driver, canvas, 2, 3, shape)
    box = driver.find_element("css selector", ".s2e-scan")
    assert (box.get_attribute("data-row"), box.get_attribute("data-col")) == ("2", "3")
    box.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_RIGHT)
    assert (box.get_attribute("data-row"), box.get_attribute("data-col")) == ("4", "4")
    value = float(driver.find_element(
        "css selector", "tr[data-element='Sb'] td.s2e-predicted").get_attribute("data-value"))
    assert abs(value - maps["calibrated"][1, 4, 4]) < 1e-4
    for _ in range(40):  # the marker stops at the edge
        box.send_keys(Keys.ARROW_UP)
    assert box.get_attribute("data-row") == "0"
    shot = driver.get_screenshot_as_png()
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), float)
    assert img.std() > 10  # a rendered page, not a blank one


def test_absent_scores_say_not_computed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_report_run(run, ood=False, crystallinity=False)
    report = write_report(run)
    data = json.loads(re.search(r"<script type='application/json' id='s2e-data'>(.*?)</script>",
                                report.read_text(), re.S).group(1).replace("<\\/", "</"))
    assert data["scans"][0]["scores"]["OOD score"] is None
    assert data["scans"][0]["scores"]["crystallinity"] is None
    png = base64.b64decode(data["scans"][0]["sprite"]["png"])
    assert png[:4] == b"\x89PNG"
    driver = _driver()
    try:
        driver.get(report.as_uri())
        cell = driver.find_element("css selector", "tr[data-score='OOD score'] td")
        assert driver.find_element("css selector",
                                   "tr[data-score='OOD score'] td.s2e-score").text == \
            "not computed", cell.text
        assert driver.find_element(
            "css selector", "tr[data-score='crystallinity'] td.s2e-score").text == "not computed"
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
