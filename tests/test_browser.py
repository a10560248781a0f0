"""The app in a real browser: one ``streamlit run app.py`` server on fake runs, Debian's Chromium driven by
Selenium, every page visited, no exception box allowed, one screenshot per page in
``test-artifacts/screenshots/``. A second, tiny script that raises proves the exception detector works.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fake_run import write_fake_run  # noqa: E402

from app_pages.common import PAGES  # noqa: E402
from workbench.projections import precompute_projections  # noqa: E402
from workbench.runs import load_run  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
SERVER_START_TIMEOUT_S = 60
PAGE_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="the browser test needs `chromium` and `chromedriver` on PATH "
               "(Debian: apt-get install chromium chromium-driver)",
    ),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="module")
def streamlit_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start ``streamlit run <script>`` servers; every one is terminated at teardown. Their projection caches go to
    a temporary user cache folder, never into the repository or the user's own cache."""
    started: list[tuple[subprocess.Popen, object]] = []
    user_cache = tmp_path_factory.mktemp("user-cache")

    def start(script: Path, env_extra: dict[str, str]) -> str:
        port = _free_port()
        log = open(tmp_path_factory.mktemp("streamlit-log") / "server.log", "w+")
        env = {**os.environ, "MSCL_WORKBENCH_CACHE": str(user_cache), **env_extra}
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        started.append((server, log))
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(f"{base}/_stcore/health", server, SERVER_START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as error:
            log.seek(0)
            raise RuntimeError(f"{error}\n--- server log ---\n{log.read()}") from error
        return base

    yield start
    for server, log in started:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def download_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(download_dir: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


def wait_until_rendered(driver, timeout_s: float = PAGE_TIMEOUT_S) -> None:
    """Wait until Streamlit finished running the script: the app reports ``notRunning``, no status
    widget or skeleton is shown, and the main block holds elements; twice in a row, 0.5 s apart."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    calm_checks = 0
    while time.monotonic() < deadline:
        states = [element.get_attribute("data-test-script-state")
                  for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]')]
        busy = (
            states != ["notRunning"]
            or driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
            or driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSkeleton"]')
            or driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"]')
            or not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] [data-testid="stElementContainer"]')
        )
        calm_checks = 0 if busy else calm_checks + 1
        if calm_checks >= 2:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{driver.current_url} was still running after {timeout_s} s")


def exception_messages(driver) -> list[str]:
    """Texts of the exception boxes Streamlit shows for uncaught errors (empty when there are none)."""
    from selenium.webdriver.common.by import By

    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')]


def page_not_found(driver) -> bool:
    """Whether Streamlit shows its "Page not found" dialog (an unknown URL path)."""
    from selenium.webdriver.common.by import By

    return any("Page not found" in element.text for element in driver.find_elements(By.CSS_SELECTOR, '[role="dialog"]'))


def save_full_screenshot(driver, path: Path) -> None:
    """Screenshot of the whole main area: the window is stretched to the content height first."""
    height = driver.execute_script(
        "const main = document.querySelector('[data-testid=\"stMain\"]');"
        "return main ? main.scrollHeight : document.body.scrollHeight;"
    )
    driver.set_window_size(1400, int(min(max(1000, height + 40), 8000)))
    time.sleep(1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)


@pytest.fixture(scope="module")
def fake_runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser-runs")
    for name, seed, preset_kwargs in (("baseline", 0, {"with_projector": False}), ("contrastive", 1, {})):
        path = write_fake_run(root / name, seed=seed, **preset_kwargs)
        precompute_projections(load_run(path), methods=("pca",))
    return root


@pytest.fixture(scope="module")
def app_url(streamlit_server_factory, fake_runs_root: Path) -> str:
    """One ``streamlit run app.py`` server on the fake runs for every test of this module."""
    return streamlit_server_factory(REPO_ROOT / "app.py", {"MSCL_RUNS": str(fake_runs_root)})


def page_problems(driver, base: str, screenshot_dir: Path) -> dict[str, list[str]]:
    """Visit every page, save a screenshot of each, and list what is wrong on each page."""
    from selenium.webdriver.common.by import By

    problems: dict[str, list[str]] = {}
    for page in PAGES:
        started = time.monotonic()
        driver.get(f"{base}/{page.url}")
        wait_until_rendered(driver)
        print(f"{page.url_path}: rendered in {time.monotonic() - started:.1f} s")
        save_full_screenshot(driver, screenshot_dir / f"{page.url_path}.png")
        found = [f"exception box: {message}" for message in exception_messages(driver)]
        if page_not_found(driver):
            found.append(f"{base}/{page.url} is not a page of the app")
        titles = [element.text for element in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')]
        if not titles or not titles[0].startswith(page.title):
            found.append(f"title {titles[:1]} instead of '{page.title}'")
        if not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] .js-plotly-plot'):
            found.append("no plotly chart drawn")
        if found:
            problems[page.url_path] = found
    return problems


def test_every_page_renders_without_exception(app_url: str, browser) -> None:
    problems = page_problems(browser, app_url, SCREENSHOTS)
    assert not problems, f"pages with problems (screenshots in {SCREENSHOTS}): {problems}"


@pytest.mark.skipif(not (REPO_ROOT / "sample_data/runs").is_dir(), reason="no shipped sample_data/runs")
def test_every_page_renders_on_the_shipped_runs(streamlit_server_factory, browser) -> None:
    """The app as a new user first sees it: default runs folder, the shipped demo runs."""
    base = streamlit_server_factory(REPO_ROOT / "app.py", {"MSCL_RUNS": ""})
    problems = page_problems(browser, base, SCREENSHOTS / "sample_data")
    assert not problems, f"pages with problems (screenshots in {SCREENSHOTS / 'sample_data'}): {problems}"


def test_study_page_renders_the_effect_and_its_figures(app_url: str, browser) -> None:
    """The Study page (registered in app.py after the pages of ``PAGES``) on the fake runs: one ce and one ms+cs
    run of seed 0, so one paired seed and no interval."""
    from selenium.webdriver.common.by import By

    browser.get(f"{app_url}/study")
    wait_until_rendered(browser)
    save_full_screenshot(browser, SCREENSHOTS / "study.png")
    assert exception_messages(browser) == [] and not page_not_found(browser)
    titles = [element.text for element in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h1')]
    assert titles and titles[0].startswith("Study")
    main = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert "ms+cs − ce = " in main and "mIoU, 1 seed (no interval or p-value from a single pair) — val split" in main
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] .js-plotly-plot')) == 3


def test_detector_sees_an_exception_box(streamlit_server_factory, browser, tmp_path: Path) -> None:
    script = tmp_path / "raising_app.py"
    script.write_text(
        "import streamlit as st\n"
        "st.title('About to fail')\n"
        "raise ValueError('deliberate failure for the browser test')\n"
    )
    base = streamlit_server_factory(script, {})
    browser.get(base)
    wait_until_rendered(browser)
    errors = exception_messages(browser)
    assert len(errors) == 1 and "deliberate failure for the browser test" in errors[0]


def test_figure_export_downloads_an_svg(app_url: str, browser, download_dir: Path) -> None:
    """The Export popover under a figure produces the static file on click (kaleido + Chromium)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{app_url}/iou")
    wait_until_rendered(browser)
    browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] [data-testid="stPopover"] button')[0].click()
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    buttons: dict = {}
    while set(buttons) != {"PNG", "SVG"} and time.monotonic() < deadline:
        time.sleep(0.3)
        buttons = {button.text: button
                   for button in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDownloadButton"] button')
                   if button.is_displayed()}
    assert set(buttons) == {"PNG", "SVG"}, f"the Export popover showed {sorted(buttons)} within {PAGE_TIMEOUT_S} s"
    buttons["SVG"].click()
    target = download_dir / "per_class_iou_diff.svg"
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert target.is_file(), f"no {target.name} downloaded; found {sorted(p.name for p in download_dir.iterdir())}"
    assert target.read_text().lstrip().startswith("<svg") and "IoU" in target.read_text()
