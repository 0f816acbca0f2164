"""The HTML report in a real browser (headless Chromium through selenium): the key columns fit a laptop screen."""

from __future__ import annotations

import shutil

import pytest

from benchmark.report.card import build_report
from benchmark.report.render import write_report
from tests.benchmark.test_report import sample_rows

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no Chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.mark.parametrize("width", [1280, 1920])
def test_metric_retention_and_parity_headers_are_on_screen(browser, tmp_path, width):
    report = build_report("quickstart", sample_rows(), "accuracy", ["android", "ios", "server"], 0.97, threads=2)
    page = write_report(report, tmp_path)["html"]
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    browser.get(page.as_uri())
    assert browser.execute_script("return window.innerWidth") == width
    visible = browser.execute_script("return document.documentElement.clientWidth")  # less a vertical scrollbar
    boxes = browser.execute_script(
        "return [...document.querySelectorAll('table.key th')].map(th => "
        "[th.textContent, th.getBoundingClientRect().left, th.getBoundingClientRect().right])")
    where = {name: (left, right) for name, left, right in boxes}
    for header in ("accuracy", "Retention %", "Parity", "Size MB", "p50 ms"):
        left, right = where[header]
        assert 0 <= left < right <= visible, f"{header} lies at {left:.0f}..{right:.0f} px, outside {visible} px"
    assert browser.execute_script("return window.scrollX") == 0
    assert browser.execute_script("return document.documentElement.scrollWidth") <= visible  # no horizontal scroll
