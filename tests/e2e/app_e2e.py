"""End-to-end test of the desktop app: the real binary in a real WebKit window under Xvfb,
driven through tauri-driver + WebKitWebDriver (run by scripts/e2e.sh).

Sends a prompt to a small test model, sees tokens stream and visualizer rows appear, stops the
answer, checks that the rows equal the engine's forward passes, saves a screenshot, restarts the
app and finds the conversation again.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.options import ArgOptions

APP = os.environ["FIXPOINT_APP"]
SCREENSHOT = os.environ.get("FIXPOINT_SCREENSHOT", "docs/screenshot.png")


def session():
    opts = ArgOptions()
    opts.set_capability("browserName", "wry")
    opts.set_capability("tauri:options", {"application": APP})
    d = webdriver.Remote(command_executor="http://127.0.0.1:4444", options=opts)
    CURRENT["driver"] = d
    return d


CURRENT = {}


def wait(what, cond, timeout=60.0, every=0.05):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception:  # the DOM may be mid-render
            pass
        time.sleep(every)
    page = ""
    if "driver" in CURRENT:
        try:
            page = CURRENT["driver"].execute_script("return document.body.innerText")[:2000]
        except Exception as e:  # noqa: BLE001
            page = f"(no page: {e})"
    raise AssertionError(f"timed out waiting for {what}; the window shows:\n{page}")


def by(driver, testid):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def all_by(driver, testid):
    return driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def titles(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=conversation] .title')].map(e => e.textContent)"
    )


def main():
    d = session()
    try:
        wait("the model to load", lambda: "parameters" in by(d, "model-status").text, 120)
        by(d, "new-chat").click()
        wait("a conversation", lambda: len(all_by(d, "conversation")) == 1)
        mt = by(d, "setting-max-tokens")
        mt.clear()
        mt.send_keys("3000")
        by(d, "setting-block").click()  # blur the number input so its change applies
        by(d, "composer").send_keys("Tell me a very long story about a lighthouse.")
        by(d, "send").click()

        # Tokens stream in and visualizer rows appear while the answer is still running.
        first = wait("streamed text", lambda: int(by(d, "streaming").get_attribute("data-chars")), 30)
        wait("more streamed text", lambda: int(by(d, "streaming").get_attribute("data-chars")) > first, 30)
        wait("visualizer rows", lambda: len(all_by(d, "viz-row")) >= 3, 30)
        assert all_by(d, "stop"), "the answer finished before Stop could be pressed"
        time.sleep(0.3)
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(1.0)
        os.makedirs(os.path.dirname(SCREENSHOT) or ".", exist_ok=True)
        d.save_screenshot(SCREENSHOT)
        by(d, "stop").click()

        answer = wait(
            "the stopped answer to be saved",
            lambda: [m for m in all_by(d, "message-assistant") if m.get_attribute("data-stop")],
            60,
        )[0]
        assert answer.get_attribute("data-stop") == "cancelled", answer.get_attribute("data-stop")
        passes = int(answer.get_attribute("data-passes"))
        rows = wait(
            "all iterations drawn",
            lambda: int(by(d, "visualizer").get_attribute("data-iterations")) == passes and passes,
            10,
        )
        assert rows, "visualizer rows != forward passes"
        print(f"stopped after {passes} forward passes; visualizer has {passes} rows")
        # The first message names the conversation.
        title = wait(
            "the conversation to be named",
            lambda: [t for t in titles(d) if "lighthouse" in t][0],
            10,
        )
    finally:
        d.quit()

    # A new session starts the app again: the conversation and both messages are still there.
    d = session()
    try:
        wait("the conversation after restart", lambda: titles(d), 30)
        assert titles(d) == [title], titles(d)
        d.find_element(By.CSS_SELECTOR, '[data-testid="conversation"] .title').click()
        wait("the saved messages", lambda: len(all_by(d, "message-user")) == 1
             and len(all_by(d, "message-assistant")) == 1, 30)
        print("conversation reopened after restart:", title)
    finally:
        d.quit()


if __name__ == "__main__":
    main()
    print("e2e: ok")
    sys.exit(0)
