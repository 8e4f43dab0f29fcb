"""JupyterLab 4 (pinned in tests/requirements/lab.txt) with --gateway-url at gateway-lite, driven
by a real headless browser: Debian's chromium through Debian's chromedriver (/usr/bin/chromedriver;
nothing is downloaded, selenium-manager is kept offline).

Through JupyterLab's own UI: open a notebook, type `1+1` and run it with Shift+Enter (sees `2`),
define a variable, run `time.sleep(60)` and interrupt it from the Kernel menu (sees
KeyboardInterrupt, the variable survives), restart from the Kernel menu and confirm the dialog
(the variable is gone), shut the kernel down from the Kernel menu. On the gateway side
(GET /api/kernels on gateway-lite) the kernel is there while the notebook runs, keeps its id
across the restart and is gone after the shutdown.

First-run prompts are configured away rather than clicked through: the notebook is created
(Contents API) with its kernelspec in the metadata (no kernel selection dialog), and an
overrides.json silences notifications and news (no "fetch news?" toast).

All waits are explicit (generous, only to avoid hangs); on failure the report carries a
screenshot path, the page's visible text and the server and gateway log tails.

Run:  scripts/setup-env.sh && source ~/.cache/kernel-launcher/env.sh &&
      cargo build -p launcher -p gateway-lite &&
      $KL_PY_LAB -m pytest -v tests/gateway/test_jupyterlab.py
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import pytest
import requests

from support.gateway import isolated_env, reap, require_exe, run_gateway, run_jupyter, wait_until
from support.kernels import describe, kernel_processes, wait_gone

UI_WAIT = 120  # generous bound for one UI step (the page loads a large bundle on 2 shared cores)
CHROMEDRIVER = "/usr/bin/chromedriver"
NB = "gateway-lite.ipynb"
DISPLAY_NAME = "Python (gateway-lite)"

LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "checkForUpdates": False,
        "doNotDisturbMode": True,
        "fetchNews": "false",
    },
    # Render every cell (no virtual windowing), so outputs can be read from the DOM.
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


def _chromium() -> str:
    # /usr/bin/chromium is Debian's wrapper script; the browser binary is under /usr/lib.
    for path in ("/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if os.access(path, os.X_OK):
            return path
    pytest.fail("chromium not found: scripts/setup-env.sh installs Debian's chromium and chromium-driver",
                pytrace=False)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: run this test with $KL_PY_LAB (scripts/setup-env.sh)", pytrace=False)
    require_exe(CHROMEDRIVER, "chromedriver", "scripts/setup-env.sh installs Debian's chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must never try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    marker = f"chromium-{uuid.uuid4().hex}"
    env = isolated_env(tmp_path / "chromium", marker)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"), env=env)
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        reap(marker)  # chromedriver and every chromium process carry the marker


class Lab:
    """The bits of JupyterLab's DOM this test uses (JupyterLab 4 class names and command ids)."""

    def __init__(self, driver, tmp: Path):
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.d, self.tmp = driver, tmp
        self.By, self.Keys, self.ActionChains = By, Keys, ActionChains
        self.died_dialogs: list[str] = []  # see test_jupyterlab_notebook_on_gateway_lite

    def dismiss_died_dialog(self) -> None:
        """Record and close JupyterLab's "Kernel Restarting ... appears to have died" dialog."""
        for e in self.d.find_elements(self.By.CSS_SELECTOR, ".jp-Dialog"):
            if "appears to have died" in e.text:
                self.died_dialogs.append(e.text)
                e.find_element(self.By.CSS_SELECTOR, ".jp-Dialog-button.jp-mod-accept").click()

    def wait(self, predicate, what: str, timeout: float = UI_WAIT):
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        def safe():
            try:
                self.dismiss_died_dialog()
                return predicate()
            except (StaleElementReferenceException, WebDriverException):
                return None

        return wait_until(safe, timeout, what, interval=0.3)

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def code_cells(self) -> int:
        return self.js("return document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell').length")

    def output(self, i: int) -> str:
        return self.js(
            "const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')[arguments[0]];"
            "return c ? Array.from(c.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).join('\\n') : '';",
            i,
        )

    def prompt(self, i: int) -> str:
        return self.js(
            "const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-CodeCell')[arguments[0]];"
            "const p = c && c.querySelector('.jp-InputArea-prompt'); return p ? p.textContent : '';",
            i,
        )

    def kernel_status(self) -> str:
        """The status bar's kernel status ("Python (gateway-lite) | Idle" -> "Idle"). It reads
        Idle only once the notebook's session has a kernel whose connection is up (JupyterLab's
        sessionContext.kernelDisplayStatus); the toolbar's execution indicator says idle before."""
        text = self.js(
            "return Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))"
            ".map(e => e.textContent.trim()).find(t => t.startsWith(arguments[0] + ' | ')) || '';",
            DISPLAY_NAME,
        )
        return text.split(" | ", 1)[1] if " | " in text else ""

    def wait_idle(self, what: str):
        self.wait(lambda: self.kernel_status() == "Idle", f"kernel Idle in the status bar ({what})")

    def run_in_cell(self, i: int, code: str) -> None:
        """Click into code cell i, type `code`, Shift+Enter."""

        def focused_editor():
            cell = self.d.find_elements(self.By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-CodeCell")[i]
            editor = cell.find_element(self.By.CSS_SELECTOR, ".cm-content")
            if not self.js("return document.activeElement === arguments[0]", editor):
                editor.click()  # not interactable while the cell is being laid out: retried
            return editor if self.js("return document.activeElement === arguments[0]", editor) else None

        editor = self.wait(focused_editor, f"focus in the editor of cell {i}")
        editor.send_keys(code)
        self.wait(lambda: editor.text.replace("\n", "") == code.replace("\n", ""),
                  f"cell {i} to hold {code!r} (has {editor.text!r})")
        self.ActionChains(self.d).key_down(self.Keys.SHIFT).send_keys(self.Keys.ENTER).key_up(self.Keys.SHIFT).perform()

    def kernel_menu(self, command: str) -> None:
        """Kernel menu -> the item bound to `command` (a JupyterLab command id)."""
        label = self.wait(
            lambda: next((e for e in self.d.find_elements(self.By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                          if e.text.strip() == "Kernel"), None),
            "the Kernel menu in the menu bar",
        )
        label.click()
        item = self.wait(
            lambda: next((e for e in self.d.find_elements(
                self.By.CSS_SELECTOR, f'.lm-Menu-item[data-command="{command}"]') if e.is_displayed()), None),
            f"menu item {command}",
        )
        item.click()

    def accept_dialog(self, title_word: str) -> None:
        dialog = self.wait(
            lambda: next((e for e in self.d.find_elements(self.By.CSS_SELECTOR, ".jp-Dialog")
                          if title_word in e.text), None),
            f"dialog mentioning {title_word!r}",
        )
        dialog.find_element(self.By.CSS_SELECTOR, ".jp-Dialog-button.jp-mod-accept").click()
        self.wait(lambda: self._gone(dialog), f"the {title_word!r} dialog to close")

    def _gone(self, element) -> bool:
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            return not element.is_displayed()
        except StaleElementReferenceException:
            return True

    def dialogs(self) -> list[str]:
        """Texts of the dialogs open now."""
        return [e.text for e in self.d.find_elements(self.By.CSS_SELECTOR, ".jp-Dialog")]

    def evidence(self) -> str:
        shot = self.tmp / "jupyterlab-failure.png"
        with contextlib.suppress(Exception):
            self.d.save_screenshot(str(shot))
        text = ""
        with contextlib.suppress(Exception):
            text = self.js("return document.body.innerText")[-4000:]
        return f"screenshot: {shot}\n--- page text (tail) ---\n{text}"


def _lab_args(tmp: Path) -> list[str]:
    settings = tmp / "lab-app-settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES, indent=2))
    return [
        f"--LabApp.app_settings_dir={settings}",
        f"--LabApp.user_settings_dir={tmp / 'lab-user-settings'}",
        f"--LabApp.workspaces_dir={tmp / 'lab-workspaces'}",
    ]


def test_jupyterlab_notebook_on_gateway_lite(peers, browser, tmp_path):
    specs = {"py": {"argv": peers.ipykernel_argv(), "display_name": DISPLAY_NAME, "language": "python"}}
    gw_token = uuid.uuid4().hex
    with run_gateway(peers, tmp_path / "gw", specs, "py", gw_token) as gw, \
            run_jupyter(peers, tmp_path / "lab", gw, app="jupyter-lab", extra=_lab_args(tmp_path / "lab")) as lab_srv:
        h = lab_srv.headers()
        api = lab_srv.base + "/api"
        # JupyterLab's kernelspecs come from gateway-lite.
        r = requests.get(f"{api}/kernelspecs", headers=h, timeout=60)
        assert r.status_code == 200 and "py" in r.json()["kernelspecs"], r.text[:2000]

        nb = {"cells": [], "metadata": {"kernelspec": {"name": "py", "display_name": DISPLAY_NAME,
                                                       "language": "python"}},
              "nbformat": 4, "nbformat_minor": 5}
        r = requests.put(f"{api}/contents/{NB}", headers=h, timeout=60,
                         json={"type": "notebook", "format": "json", "content": nb})
        assert r.status_code in (200, 201), r.text[:2000]

        ui = Lab(browser, tmp_path)
        try:
            browser.get(f"{lab_srv.base}/lab/tree/{NB}?token={lab_srv.token}")
            ui.wait(lambda: ui.code_cells() >= 1, "the notebook with one empty code cell")
            ui.wait_idle("after opening the notebook")

            # The notebook's kernel is a gateway-lite kernel.
            def session_kernel():
                r = requests.get(f"{api}/sessions", headers=h, timeout=60)
                return next((s["kernel"]["id"] for s in r.json() if s.get("path") == NB and s.get("kernel")), None)

            kid = ui.wait(session_kernel, "a Jupyter Server session for the notebook")
            assert [k["id"] for k in gw.kernels()] == [kid], (kid, gw.kernels())

            # 1+1 -> 2
            ui.run_in_cell(0, "1+1")
            ui.wait(lambda: ui.output(0).strip() == "2", f"output 2 of cell 0 (has {ui.output(0)!r})")
            ui.wait(lambda: ui.code_cells() >= 2, "Shift+Enter to add cell 1")

            ui.run_in_cell(1, "x = 41; x + 1")
            ui.wait(lambda: ui.output(1).strip() == "42", f"output 42 of cell 1 (has {ui.output(1)!r})")
            ui.wait(lambda: ui.code_cells() >= 3, "Shift+Enter to add cell 2")

            # Interrupt a running cell from the Kernel menu.
            ui.run_in_cell(2, "import time; print('sleeping', flush=True); time.sleep(60)")
            ui.wait(lambda: "sleeping" in ui.output(2), "cell 2 to start sleeping")
            assert ui.prompt(2).strip() == "[*]:", ui.prompt(2)
            ui.kernel_menu("kernelmenu:interrupt")
            ui.wait(lambda: "KeyboardInterrupt" in ui.output(2), f"KeyboardInterrupt in cell 2 (has {ui.output(2)!r})")
            ui.wait_idle("after the interrupt")

            ui.run_in_cell(3, "x")
            ui.wait(lambda: ui.output(3).strip() == "41", f"x still 41 after the interrupt (has {ui.output(3)!r})")

            # Restart from the Kernel menu (confirm JupyterLab's dialog): a new kernel process
            # under the same id in gateway-lite.
            before = kernel_processes(kid)
            assert before, f"no process carries KERNEL_ID={kid}"
            ui.kernel_menu("kernelmenu:restart")
            ui.accept_dialog("Restart")
            survivors = wait_gone(before, timeout=UI_WAIT)
            assert not survivors, f"pre-restart kernel processes still alive: {describe(survivors)}"
            ui.wait_idle("after the restart")
            assert [k["id"] for k in gw.kernels()] == [kid], ("restart keeps the kernel id", kid, gw.kernels())
            # A requested restart must not look like a crash. JupyterLab reads an iopub
            # `status: restarting` as "the kernel died and the server is auto-restarting it" and
            # opens "Kernel Restarting: ... appears to have died". Jupyter Server and EG send
            # that status only on an automatic restart, and so does gateway-lite. Every wait
            # records and closes that dialog (ui.died_dialogs), so the rest of the scenario
            # still runs; any such dialog fails the test at the end.
            assert kernel_processes(kid), "no kernel process after the restart"

            ui.run_in_cell(4, "x")
            ui.wait(lambda: "NameError" in ui.output(4), f"NameError after the restart (has {ui.output(4)!r})")

            # Shut the kernel down from the Kernel menu: gone from gateway-lite too.
            ui.kernel_menu("kernelmenu:shutdown")
            wait_until(lambda: kid not in [k["id"] for k in gw.kernels()], UI_WAIT,
                       f"kernel {kid} to leave gateway-lite after Shut Down Kernel")
            r = requests.get(f"{api}/kernels", headers=h, timeout=60)
            assert r.status_code == 200 and kid not in [k["id"] for k in r.json()], r.text[:2000]
            survivors = wait_gone(kernel_processes(kid) | before, timeout=UI_WAIT)
            assert not survivors, f"kernel processes left after Shut Down Kernel: {describe(survivors)}"
        except (Exception, pytest.fail.Exception) as exc:
            raise AssertionError(
                f"{exc}\n{ui.evidence()}\n--- jupyter-lab log tail ---\n{lab_srv.log_tail(40)}"
                f"\n--- gateway-lite log tail ---\n{gw.log_tail(40)}"
            ) from exc
    assert not ui.died_dialogs, (
        f"a requested restart (Kernel > Restart Kernel) made JupyterLab show {ui.died_dialogs[0]!r}: "
        "the gateway announced it as an automatic restart after a death"
    )
