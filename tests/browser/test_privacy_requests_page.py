"""The Privacy requests page as privacy staff use it: a real ``airflow standalone`` on loopback (its
own PostgreSQL metadata database, the reference deployment), headless Debian Chromium driven by
Selenium, two staff users logging in through the simple auth manager's own form.

1. alice (op) records an erasure for a person whose e-mail she types in odd case; the dry run's
   plan appears in plain language; she sends it for approval and may not approve it herself;
2. bob (admin) approves it; the request completes and its certificate opens as HTML;
3. bob records an export (e-mail only), verifies the person on the page, sees it complete, shows
   the download link and reveals the passphrase (recorded with his name);
4. as an engineer would, bob triggers ``dsr_export`` from Airflow's own trigger form with only an
   e-mail (every other field left empty), answers its Required action, and the run succeeds; the
   maintenance pass then scrubs the e-mail from the run's configuration.

Afterwards Airflow's metadata database (run configurations, the action log, XCom, rendered
fields, Required-action rows) and the API server's output hold none of the identities typed.
Screenshots of every page go to ``test-output/browser/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from governance_dev.services import free_port
from governance_dev.standalone import PRELOADING_EXECUTOR, stop_process_tree
from tests.fixtures.reference import Deployment

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ERASURE_EMAIL = "dANIEL.okafor@EXAMPLE.com"  # cast member call_handler, typed in odd case
EXPORT_EMAIL = "  Kenji.TANAKA@example.ORG "  # cast member caller_only
FORM_EMAIL = " Olivia.BENNETT@example.com"  # cast member payer, typed into Airflow's trigger form
TYPED = [ERASURE_EMAIL.strip(), EXPORT_EMAIL.strip(), FORM_EMAIL.strip()]

pytestmark = [
    pytest.mark.slow(seconds=600),
    pytest.mark.integration,
    pytest.mark.dagrun,
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="Debian chromium and chromium-driver are not installed (.ci/run installs them)"),
]  # fmt: skip


def _identity_variants() -> list[str]:
    from governance_dev.seed import cast_member

    values = {v.strip() for v in TYPED} | {v.strip().lower() for v in TYPED}
    for key in ("call_handler", "caller_only", "payer"):
        subject = cast_member(key)
        for value in (subject.email, subject.phone, subject.e164, subject.full_name):
            if value:
                values |= {value, value.lower()}
    return sorted(values)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the server may not answer yet
            last = exc
        time.sleep(2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} within {timeout_s:.0f} s (last error: {last!r})\n{tail}")


@pytest.fixture
def standalone(reference_clone: Deployment, make_db: Callable[[str], str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``airflow standalone`` on a free loopback port with its own metadata database, with the
    executor ``make airflow`` runs (``PreloadingLocalExecutor``)."""
    metadata_url = make_db("browser_airflow")
    info = psycopg.conninfo.conninfo_to_dict(metadata_url)
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") or k in (
        "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES", "AIRFLOW__OPENLINEAGE__TRANSPORT", "AIRFLOW__OPENLINEAGE__NAMESPACE")}  # fmt: skip
    env.update({
        "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{info['dbname']}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:op,bob:admin",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        # Off port 8080, tasks must be told where the execution API is.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # The executor `make airflow` runs: task processes fork with Great Expectations loaded.
        "AIRFLOW__CORE__EXECUTOR": PRELOADING_EXECUTOR,
    })  # fmt: skip
    log = tmp_path / "standalone.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["airflow", "standalone"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            health = _get_json(f"{base}/api/v2/monitor/health")
            return all(health[p]["status"] == "healthy" for p in ("metadatabase", "scheduler"))

        def dags_parsed() -> bool:
            with psycopg.connect(metadata_url) as conn:
                found = {r[0] for r in conn.execute("SELECT dag_id FROM dag WHERE NOT is_stale").fetchall()}
            return {"dsr_erasure", "dsr_export"} <= found

        _wait(healthy, 420, "airflow standalone was not healthy", log)
        _wait(dags_parsed, 300, "the privacy-request DAGs were not parsed", log)
        passwords = json.loads(_wait(lambda: (home / "simple_auth_manager_passwords.json.generated").read_text(), 60,
                                     "no simple auth manager passwords", log))  # fmt: skip
        yield {"base": base, "passwords": passwords, "log": log, "home": home, "metadata_url": metadata_url,
               "proc": proc, "deployment": reference_clone, "env": env}  # fmt: skip
    finally:
        if proc.poll() is None:
            # Its whole tree: Airflow's components and executor workers leave the process group.
            stop_process_tree(proc.pid, grace_s=60)
            proc.wait(timeout=30)
        kept = SCREENSHOTS / "standalone.log"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, kept)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(90)
    try:
        yield driver
    finally:
        driver.quit()


# Chromium replaces a document's nodes while React re-renders or a navigation lands: an element
# found a moment earlier can then be refused ("stale element reference", or chromedriver's
# "Node with given id does not belong to the document"). Such a refusal comes before the action
# is dispatched, so the element is found again and the action retried.
TRANSIENT_DOM_ERRORS = ("does not belong to the document", "No node with given id", "stale element",
                        "Cannot find context with specified id")  # fmt: skip


def _transient(exc: BaseException) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    if isinstance(exc, StaleElementReferenceException):
        return True
    return isinstance(exc, WebDriverException) and any(t in str(exc) for t in TRANSIENT_DOM_ERRORS)


def _again(action: Callable[[], Any], attempts: int = 6) -> Any:
    """``action()``, found and tried again while the DOM it touched was being replaced."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _waiter(driver: Any, timeout_s: float) -> Any:
    """A ``WebDriverWait`` whose predicates may meet a DOM being replaced (they only read)."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, WebDriverException))  # fmt: skip


class Step:
    """Names the step of the walk a failure happened in (added to the exception's notes)."""

    def __init__(self) -> None:
        self.name = "starting"

    def __call__(self, name: str) -> None:
        self.name = name


class Staff:
    """One person at the browser."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def present(self, css: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(_again(lambda: self.driver.find_elements(By.CSS_SELECTOR, css)))

    def text(self, css: str) -> str:
        return str(_again(lambda: self.find(css).text))

    def type(self, css: str, value: str) -> None:
        def typed() -> None:
            field = self.find(css)
            field.clear()
            field.send_keys(value)

        _again(typed)

    def login(self, user: str, password: str, shot: str) -> None:
        from selenium.webdriver.support import expected_conditions as ec

        self.driver.delete_all_cookies()
        self.get(f"{self.base}/auth/login/")
        wait = _waiter(self.driver, 60)
        wait.until(ec.presence_of_element_located(("css selector", "input[name=username]")))
        self.type("input[name=username]", user)
        self.type("input[name=password]", password)
        self.shot(shot)
        self.submit("button[type=submit]", lambda d: any(c["name"] == "_token" for c in d.get_cookies()), 60)

    def get(self, url: str) -> None:
        """Open ``url``; on a loaded machine the renderer can stall once: try again."""
        from selenium.common.exceptions import TimeoutException

        for attempt in range(3):
            try:
                self.driver.get(url)
                return
            except TimeoutException:
                if attempt == 2:
                    raise
                time.sleep(5)

    def submit(self, css: str, until: Callable[[Any], Any], timeout_s: float = 120) -> None:
        """Click ``css`` once and wait for the page it leads to (``until(driver)`` true). A click
        refused because the page was being replaced is tried again only if nothing happened."""

        def click() -> None:
            if _again(lambda: until(self.driver)):
                return  # the refused click had gone through after all
            self.find(css).click()

        _again(click)
        _waiter(self.driver, timeout_s).until(until)

    def page(self, path: str = "/") -> None:
        self.get(f"{self.base}/privacy-requests{path}")

    def reload_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:
                if not _transient(exc):
                    raise
            time.sleep(3)
            self.get(self.driver.current_url)
        self.shot("timeout-" + what.replace(" ", "-")[:40])
        raise AssertionError(f"{what} within {timeout_s:.0f} s; page:\n{self.text('body')[:3000]}")

    def select(self, css: str, *, index: int | None = None, value: str | None = None) -> None:
        from selenium.webdriver.support.ui import Select

        def chosen() -> None:
            choice = Select(self.find(css))
            if value is not None:
                choice.select_by_value(value)
            else:
                choice.select_by_index(index or 1)

        _again(chosen)


def _button(driver: Any, text: str, *, last: bool = False) -> Any:
    """The first (or last) visible button whose text is ``text`` (Airflow's React UI has no
    stable ids)."""
    buttons = [b for b in driver.find_elements("tag name", "button") if b.text.strip() == text and b.is_displayed()]
    return (buttons[-1] if last else buttons[0]) if buttons else None


def _click_button(driver: Any, text: str, timeout_s: float, *, last: bool = False) -> None:
    """Wait for the button ``text`` and click it, found again if React replaced it meanwhile."""
    _waiter(driver, timeout_s).until(lambda d: _button(d, text, last=last) is not None)
    _again(lambda: _button(driver, text, last=last).click())


def _api_token(base: str, user: str, password: str) -> str:
    return str(_api(f"{base}/auth/token", None, method="POST", body={"username": user, "password": password})["access_token"])


def _api(url: str, token: str | None, *, method: str = "GET", body: Any = None) -> Any:
    """Airflow's REST API as the trigger form and the Required-actions page call it."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def _request_id_from(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def test_privacy_staff_erase_and_export_from_the_page_and_airflow_keeps_no_identity(
    standalone: dict[str, Any], browser: Any
) -> None:
    step = Step()
    try:
        _walk(standalone, browser, step)
    except BaseException as exc:
        exc.add_note(f"the walk failed in the step: {step.name}")
        raise


def _walk(standalone: dict[str, Any], browser: Any, step: Step) -> None:
    base, passwords = standalone["base"], standalone["passwords"]
    alice = Staff(browser, base)

    # -- alice records an erasure: the dry run's plan appears in plain language ------------------
    step("alice logs in")
    alice.login("alice", passwords["alice"], "01-login")
    step("alice opens Privacy requests from Airflow's navigation")
    alice.get(f"{base}/plugin/privacy-requests")  # the nav entry inside the Airflow UI
    _waiter(browser, 60).until(lambda d: alice.present("iframe") and "Privacy requests" in d.page_source)
    time.sleep(2)
    alice.shot("02-airflow-nav-privacy-requests")
    step("alice records an erasure")
    alice.page("/")
    assert "Record a new request" in alice.text("body")
    alice.select("#kind", value="erasure")
    alice.type("#email", ERASURE_EMAIL)
    alice.shot("03-record-erasure")
    alice.submit("#record", lambda d: "/privacy-requests/requests/era-" in d.current_url)
    erasure_id = _request_id_from(browser.current_url)
    for typed in TYPED:
        assert typed.lower() not in browser.current_url.lower()
    step("alice reads the dry run's plan")
    alice.reload_until(lambda: alice.present("#plan-heading") and "Dry run" in alice.text("#plan-heading"), 300,
                       "the dry run's plan was not shown")  # fmt: skip
    plan = alice.text("table.plan")
    assert "Calls answered by the AI receptionist" in plan and "Account holders" in plan
    assert "Cleared" in plan and "Deleted" in plan
    assert "clear mention" not in plan and "clear_mention" not in plan
    alice.reload_until(lambda: alice.present("#start-erasure"), 300, "the dry run did not finish")
    alice.shot("04-dry-run-plan")

    step("alice sends the erasure for approval")
    alice.submit("#start-erasure", lambda d: not alice.present("#start-erasure"))
    alice.reload_until(lambda: alice.present("#approve-form"), 300, "the erasure did not wait for approval")
    assert "What changed since the dry run" in alice.text("body")
    alice.shot("05-awaiting-approval")
    alice.select("#verification_method", index=1)
    step("alice may not approve her own request")
    alice.submit("#approve", lambda d: "Four eyes" in alice.text("body"))
    alice.shot("06-recorder-may-not-approve")

    # -- bob approves; the request completes with its certificate --------------------------------
    bob = Staff(browser, base)
    step("bob logs in")
    bob.login("bob", passwords["bob"], "07-login-second-user")
    step("bob approves the erasure")
    bob.page(f"/requests/{erasure_id}")
    bob.select("#verification_method", index=1)
    bob.shot("08-approve")
    bob.submit("#approve", lambda d: not bob.present("#approve-form"))
    bob.reload_until(lambda: "completed" in bob.text("#state"), 420, "the erasure did not complete")
    assert bob.present("#certificate-link")
    record = bob.text("#actions")
    assert "recorded alice" in record and "approved bob" in record
    bob.shot("09-erasure-completed")
    step("bob opens the certificate")
    bob.get(_again(lambda: bob.find("#certificate-link").get_attribute("href")))
    certificate = bob.text("body")
    assert "certificate" in certificate.lower() and erasure_id in certificate
    bob.shot("10-certificate")

    # -- bob records an export with only an e-mail, verifies it, reveals the passphrase ----------
    step("bob records an export")
    bob.page("/")
    bob.select("#kind", value="export")
    bob.type("#email", EXPORT_EMAIL)
    bob.submit("#record", lambda d: "/privacy-requests/requests/exp-" in d.current_url)
    export_id = _request_id_from(browser.current_url)
    assert export_id.startswith("exp-")
    bob.reload_until(lambda: bob.present("#verify-form"), 300, "the export did not ask for verification")
    bob.shot("11-export-verify")
    step("bob verifies the person and the export completes")
    bob.select("#verify_option", index=1)
    bob.submit("#verify", lambda d: not bob.present("#verify-form"))
    bob.reload_until(lambda: "completed" in bob.text("#state"), 420, "the export did not complete")
    bob.shot("12-export-completed")
    bob.submit("#show-link", lambda d: bob.present("#download-link"))
    link = bob.text("#download-link")
    assert link.startswith("http") and export_id in link
    bob.shot("13-download-link")
    step("bob reveals the passphrase")
    bob.page(f"/requests/{export_id}")
    bob.submit("#reveal-passphrase", lambda d: bob.present("#passphrase"))
    assert len(bob.text("#passphrase")) >= 20
    bob.shot("14-passphrase")
    bob.page("/?sort=received&desc=1")
    listed = bob.text("#requests")
    assert erasure_id in listed and export_id in listed
    bob.shot("15-requests-list")

    with psycopg.connect(standalone["deployment"].app_url) as conn:
        reveals = conn.execute(
            "SELECT actor FROM governance.request_actions WHERE request_id = %s AND action = 'passphrase_revealed'",
            (export_id,),
        ).fetchall()
        runs = conn.execute("SELECT count(*) FROM governance.request_actions WHERE action = 'run_started'").fetchone()
    assert reveals == [("bob",)] and runs == (3,)

    # -- the engineer's way: Airflow's trigger form with only an e-mail -------------------------
    step("bob triggers dsr_export from Airflow's trigger form")
    bob.get(f"{base}/dags/dsr_export")
    _click_button(browser, "Trigger", 60)
    _click_button(browser, "The person", 60)
    _waiter(browser, 30).until(lambda d: d.find_elements("id", "element_email"))
    bob.type("#element_email", FORM_EMAIL)
    bob.shot("16-trigger-form-email-only")

    def triggered(d: Any) -> bool:
        return "/dags/dsr_export/runs/manual__" in d.current_url

    # the modal's own Trigger (the last one): enabled with every other field left empty
    _again(lambda: triggered(browser) or _button(browser, "Trigger", last=True).click())
    _waiter(browser, 60).until(triggered)
    step("bob answers the form run's Required action")
    run_id = urllib.parse.unquote(browser.current_url.split("/runs/", 1)[1].split("/", 1)[0])
    token = _api_token(base, "bob", passwords["bob"])
    run_path = f"{base}/api/v2/dags/dsr_export/dagRuns/{urllib.parse.quote(run_id)}"
    _wait(lambda: _api(f"{run_path}/taskInstances/verify_identity", token)["state"] == "awaiting_input", 300,
          "the form's export did not ask for verification", standalone["log"])  # fmt: skip
    time.sleep(12)  # answer only once the task has settled in its wait (see [governance] hitl_settle_seconds)
    _api(f"{run_path}/taskInstances/verify_identity/-1/hitlDetails", token, method="PATCH",
         body={"chosen_options": ["Verified: replied from the e-mail address we hold"], "params_input": {}})  # fmt: skip
    _wait(lambda: _api(run_path, token)["state"] in ("success", "failed"), 420, "the form's export did not end",
          standalone["log"])  # fmt: skip
    assert _api(run_path, token)["state"] == "success"
    bob.get(f"{base}/dags/dsr_export/runs/{urllib.parse.quote(run_id)}")
    time.sleep(3)
    bob.shot("17-trigger-form-run-succeeded")

    # -- nothing typed reached Airflow: metadata database, task logs, API server output -----------
    step("Airflow keeps no identity")
    stop_process_tree(standalone["proc"].pid, grace_s=90)
    standalone["proc"].wait(timeout=30)
    # The maintenance service's pass (every minute beside Airflow) scrubs the ended form run.
    bucket = standalone["deployment"].bucket  # the clone's bucket also holds the ledger anchors here
    maintenance_env = {**standalone["env"], "GOVERNANCE_OBJECTS_BUCKET": bucket, "GOVERNANCE_LEDGER_ANCHOR_BUCKET": bucket}
    scrub = subprocess.run([sys.executable, "-m", "governance", "maintain", "--once"], env=maintenance_env,
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert scrub.returncode == 0, scrub.stdout + scrub.stderr
    needles = _identity_variants()
    tables = ["dag_run", "log", "xcom", "rendered_task_instance_fields", "hitl_detail", "hitl_detail_history",
              "task_instance", "task_instance_history", "dag_run_note", "task_instance_note", "trigger"]  # fmt: skip
    metadata_url = standalone["metadata_url"]
    with psycopg.connect(metadata_url) as conn:
        existing = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}  # fmt: skip
        checked = [t for t in tables if t in existing]
        assert {"dag_run", "log", "xcom", "rendered_task_instance_fields", "hitl_detail"} <= set(checked)
        for table in checked:
            text = "\n".join(str(r[0]) for r in conn.execute(f"SELECT t::text FROM {table} t").fetchall()).lower()  # noqa: S608
            for needle in needles:
                assert needle.lower() not in text, f"an identity typed on the page reached Airflow's {table} table"
        confs = [r[0] for r in conn.execute("SELECT conf FROM dag_run WHERE dag_id IN ('dsr_export', 'dsr_erasure')")]
    page_confs = [c for c in confs if "identities_removed_at" not in c]
    assert len(page_confs) == 3 and all(set(c) <= {"request_id", "dry_run"} for c in page_confs)
    form_confs = [c for c in confs if "identities_removed_at" in c]
    assert len(form_confs) == 1 and not form_confs[0].get("email") and form_confs[0]["request_id"].startswith("exp-")
    outputs = [standalone["log"].read_text(errors="replace")]
    outputs += [p.read_text(errors="replace") for p in (standalone["home"] / "logs").rglob("*") if p.is_file()]
    for text in outputs:
        for needle in needles:
            assert needle.lower() not in text.lower(), "an identity typed on the page reached a log"
