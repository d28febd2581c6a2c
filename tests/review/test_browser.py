"""A real browser: headless Chromium driven by Selenium logs in, opens the queue, reviews a card, records a
verdict and opens the metrics page. Screenshots go to tmp (and into docs/ with NAMUS_EDGE_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from namus_edge_testing.review import drawn_face, make_event
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = os.environ.get("NAMUS_EDGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NAMUS_EDGE_CHROMEDRIVER", "/usr/bin/chromedriver")
DOCS = Path(__file__).resolve().parents[2] / "docs"
PW = "correct horse battery"


@pytest.fixture()
def browser(tmp_path):
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            pytest.fail(f"{exe} is required (apt-get install chromium chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,860", f"--user-data-dir={tmp_path / 'chrome'}", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _save(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("NAMUS_EDGE_UPDATE_SCREENSHOTS") == "1":
        from PIL import Image

        Image.open(path).convert("RGB").quantize(colors=64).save(DOCS / name, optimize=True)
    return path


def _seed(console) -> str:
    """Three pending candidates (v2 with crops) and a few reviewed ones so the metrics page has data."""
    store, ingest = console.service.store, console.service.ingestor
    first = None
    for i, (case, sim) in enumerate([("MP7004", 0.58), ("MP7002", 0.47), ("MP7000", 0.44)]):
        ev = make_event(version=2, track=i, case=case, similarity=sim, crop=drawn_face(100 + i),
                        others=[("MP7001", sim - 0.12), ("MP7003", sim - 0.15)], camera=f"cam{i % 2 + 1}")
        ingest.on_match("namus-edge/edge-01/match", json.dumps(ev).encode())
        first = first or ev["event_id"]
    for i, (sim, verdicts) in enumerate([(0.62, ["match", "match"]), (0.51, ["match", "match"]),
                                         (0.43, ["not_a_match"]), (0.41, ["not_a_match"]), (0.45, ["unsure"])]):
        ev = make_event(track=100 + i, case="MP7001", similarity=sim, device="edge-02")
        ingest.on_match("namus-edge/edge-02/match", json.dumps(ev).encode())
        for user, verdict in zip(("carol", "dave"), verdicts, strict=False):
            store.add_verdict(ev["event_id"], user, verdict)
    return first


def test_review_in_a_real_browser(browser, console_factory, operator_bundle, tmp_path):
    console = console_factory(None, operator_bundle)
    console.service.store.add_user("alice", "reviewer", PW)
    first = _seed(console)
    wait = WebDriverWait(browser, 30)
    browser.get(console.url + "/queue")
    wait.until(ec.presence_of_element_located((By.ID, "login-button")))  # redirected to the login page
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys(PW)
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.presence_of_element_located((By.ID, "queue")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue tbody tr")
    assert len(rows) == 3 and "MP7004" in rows[0].text
    assert "Investigative lead, not an identification" in browser.find_element(By.ID, "lead-banner").text
    _save(browser, tmp_path, "review-queue.png")

    rows[0].find_element(By.CLASS_NAME, "review-link").click()
    wait.until(ec.presence_of_element_located((By.ID, "verdict-form")))
    assert first in browser.current_url
    faces = browser.find_elements(By.CSS_SELECTOR, ".compare img.face")
    assert len(faces) == 3  # the camera crop beside the case's two photos
    # every image really loaded (crop from the console, case photos from the operator bundle)
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
               for img in faces)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".others figure")) == 2
    assert browser.find_element(By.ID, "namus-link").get_attribute("href").startswith("https://www.namus.gov/")
    body = browser.find_element(By.TAG_NAME, "body").text
    for text in ("Age at disappearance", "28", "Estimated sex", "female", "Gallery size", "0.400"):
        assert text in body, text
    _save(browser, tmp_path, "review-card.png")

    browser.find_element(By.ID, "verdict-match").click()
    Select(browser.find_element(By.ID, "reason")).select_by_value("same_person")
    browser.find_element(By.ID, "note").send_keys("same scar above the left eyebrow")
    browser.find_element(By.ID, "submit-verdict").click()
    wait.until(ec.presence_of_element_located((By.ID, "saved")))
    assert "alice: Match (same_person)" in browser.find_element(By.ID, "verdicts").text
    item = console.service.store.get_item(first)
    assert [(v["user"], v["verdict"]) for v in item["verdicts"]] == [("alice", "match")]
    assert item["status"] == "pending" and item["match_votes"] == 1  # a second reviewer must agree

    browser.find_element(By.ID, "nav-metrics").click()
    wait.until(ec.presence_of_element_located((By.ID, "overall")))
    assert browser.find_elements(By.CSS_SELECTOR, ".svg svg rect")
    overall = browser.find_element(By.ID, "overall").text
    assert "50%" in overall and "20%" in overall  # precision 2 / (2 + 2); unsure share 1 / 5
    _save(browser, tmp_path, "review-metrics.png")
