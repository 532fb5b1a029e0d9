"""The interactive docs in a real browser: log in through Authorize, create and list a task.

Headless Chromium (Debian's `chromium` and `chromium-driver`; `scripts/install-browser.sh`
installs them) runs against a live server on 127.0.0.1. Host names resolve to nothing, so the
pages render only if every asset comes from the service itself, and the browser's network log
proves that no request left 127.0.0.1.
"""

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.wait import WebDriverWait

from config import PROJECT_DIR

ARTIFACTS = PROJECT_DIR / "test-artifacts"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1800",
    # As on a machine without internet: any host name fails to resolve, loopback still works.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
TIMEOUT = 30


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium and chromedriver:
        return chromium, chromedriver
    reason = "chromium and chromedriver are not installed (run scripts/install-browser.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the browser test")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver path: Selenium never tries to download a browser or driver.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def network_log(driver: webdriver.Chrome) -> tuple[list[str], list[str]]:
    """The URLs the pages asked for since the last call, and those the browser itself
    blocked before sending (e.g. by the Content-Security-Policy), from Chrome's performance log.
    """
    urls: dict[str, str] = {}
    blocked = []
    log = driver.get_log("performance")  # type: ignore[no-untyped-call]  # untyped in Selenium
    for entry in log:
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.append(params["requestId"])
    return list(urls.values()), [urls.get(request_id, request_id) for request_id in blocked]


def security_errors(driver: webdriver.Chrome) -> list[str]:
    """Console messages about anything the page's security policy refused."""
    console = driver.get_log("browser")  # type: ignore[no-untyped-call]  # untyped in Selenium
    return [str(entry["message"]) for entry in console if entry.get("source") == "security"]


# Schemes the browser answers itself (inline data, its own start page): no network involved.
LOCAL_SCHEMES = ("data:", "blob:", "about:", "chrome:")


def assert_only_loopback(urls: list[str], blocked: list[str], base_url: str) -> None:
    assert any(url.startswith(f"{base_url}/") for url in urls), "no request reached the server"
    sent = [url for url in urls if url not in blocked]
    outside = [url for url in sent if not url.startswith((f"{base_url}/", *LOCAL_SCHEMES))]
    assert not outside, f"requests left {base_url}: {outside}"


def operation(driver: WebDriver, method: str, path: str) -> WebElement:
    """The Swagger UI block of one operation, expanded."""
    block = driver.find_element(
        By.XPATH,
        f"//div[contains(@class, 'opblock-{method}')]"
        f"[.//*[contains(@class, 'opblock-summary-path') and @data-path='{path}']]",
    )
    if "is-open" not in (block.get_attribute("class") or ""):
        block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    WebDriverWait(block, TIMEOUT).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    return block


def try_it_out(block: WebElement, *, body: str | None = None) -> str:
    """Press Try it out, optionally replace the body, Execute; the rendered response body."""
    block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    if body is not None:
        editor = block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(Keys.DELETE)
        editor.send_keys(body)
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    rendered = WebDriverWait(block, TIMEOUT).until(
        ec.visibility_of_element_located(
            (By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
        )
    )
    return str(rendered.text)


def test_docs_authorize_create_and_list_a_task(live_server: str, browser: webdriver.Chrome) -> None:
    username = f"docs_{secrets.token_hex(4)}"
    password = "correct horse battery"
    registered = httpx.post(
        f"{live_server}/auth/register",
        json={"username": username, "email": f"{username}@example.com", "password": password},
    )
    assert registered.status_code == 201, registered.text
    title = f"Task from the docs {secrets.token_hex(6)}"
    wait = WebDriverWait(browser, TIMEOUT)

    browser.get(f"{live_server}/docs")
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".info .title"), "Task Manager"))

    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
    dialog = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    dialog.find_element(By.ID, "oauth_username").send_keys(username)
    dialog.find_element(By.ID, "oauth_password").send_keys(password)
    dialog.find_element(By.CSS_SELECTOR, "button.modal-btn.authorize").click()
    wait.until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, ".modal-ux button[aria-label='Remove authorization']")
        )
    )
    dialog.find_element(By.CSS_SELECTOR, "button.btn-done").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

    created = try_it_out(operation(browser, "post", "/tasks"), body=json.dumps({"title": title}))
    assert json.loads(created)["title"] == title

    listing = operation(browser, "get", "/tasks")
    listed = try_it_out(listing)
    assert title in [task["title"] for task in json.loads(listed)]

    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", listing)
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "docs-browser.png"))

    urls, blocked = network_log(browser)
    assert f"{live_server}/auth/login" in urls
    assert f"{live_server}/tasks" in urls
    assert not blocked, f"Swagger UI tried to reach outside the service: {blocked}"
    assert not security_errors(browser)
    assert_only_loopback(urls, blocked, live_server)


def test_docs_authorize_with_a_pasted_personal_access_token(
    live_server: str, browser: webdriver.Chrome
) -> None:
    username = f"docs_{secrets.token_hex(4)}"
    password = "correct horse battery"
    account = {"username": username, "email": f"{username}@example.com", "password": password}
    assert httpx.post(f"{live_server}/auth/register", json=account).status_code == 201
    login = httpx.post(
        f"{live_server}/auth/login", json={"username": username, "password": password}
    )
    session = {"Authorization": f"Bearer {login.json()['access_token']}"}
    title = f"Task for the token {secrets.token_hex(6)}"
    assert httpx.post(f"{live_server}/tasks", json={"title": title}, headers=session).is_success
    created = httpx.post(
        f"{live_server}/auth/tokens",
        json={"name": "docs", "scopes": ["tasks:read"], "expires_in_days": 1},
        headers=session,
    )
    assert created.status_code == 201, created.text
    wait = WebDriverWait(browser, TIMEOUT)

    browser.get(f"{live_server}/docs")
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".info .title"), "Task Manager"))
    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    pasted = browser.find_element(
        By.XPATH,
        "//div[contains(@class, 'auth-container')][.//h4[contains(., 'PersonalAccessToken')]]",
    )
    pasted.find_element(By.CSS_SELECTOR, "input").send_keys(created.json()["token"])
    pasted.find_element(By.CSS_SELECTOR, "button.modal-btn.authorize").click()
    wait.until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, ".modal-ux button[aria-label='Remove authorization']")
        )
    )
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()
    wait.until(ec.invisibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))

    listed = try_it_out(operation(browser, "get", "/tasks"))
    assert title in [task["title"] for task in json.loads(listed)]
    # Only what its scope allows: creating a task needs tasks:write.
    refused = try_it_out(
        operation(browser, "post", "/tasks"), body=json.dumps({"title": "not allowed"})
    )
    assert json.loads(refused)["code"] == "insufficient_scope"
    urls, blocked = network_log(browser)
    assert not blocked, f"Swagger UI tried to reach outside the service: {blocked}"
    assert_only_loopback(urls, blocked, live_server)


def test_redoc_renders_offline(live_server: str, browser: webdriver.Chrome) -> None:
    browser.get(f"{live_server}/redoc")
    WebDriverWait(browser, TIMEOUT).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), "Task Manager API")
    )
    assert browser.find_elements(By.XPATH, "//*[text()='Create a task']")
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "redoc-browser.png"))
    urls, blocked = network_log(browser)
    # ReDoc shows its vendor's logo from a CDN; the docs' security policy blocks it unsent.
    assert all(url.startswith("https://cdn.redoc.ly/") for url in blocked), blocked
    assert_only_loopback(urls, blocked, live_server)
