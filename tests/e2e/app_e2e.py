"""End-to-end test of the desktop app: the real binary in a real WebKit window under Xvfb,
driven through tauri-driver + WebKitWebDriver (run by scripts/e2e.sh).

Sends a prompt to a small test model, sees tokens stream and visualizer rows appear, stops the
answer, checks that the rows equal the engine's forward passes, saves a screenshot, restarts the
app, finds the conversation again and continues the stopped answer. Then trains the model from
the training tab (pasted prompts, small advanced settings), checks the before/after card, finds the new model in the
model picker, chats with it (AR, chosen before the first message) and sees it answer, then
regenerates the answer with a system prompt and sees the prompt grow by it, then edits the
question and sees it answered again in place, and deletes the conversation. Last, starts the
app on a conversations file that is not a database and sees the window say where it was kept.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.options import ArgOptions
from selenium.webdriver.support.ui import Select

APP = os.environ["FIXPOINT_APP"]
SCREENSHOT = os.environ.get("FIXPOINT_SCREENSHOT", "docs/screenshot.png")
TRAIN_SCREENSHOT = os.environ.get("FIXPOINT_TRAIN_SCREENSHOT", "docs/training.png")
TRAIN_PROMPTS = [
    "what is 1 plus 2?",
    "name three colours",
    "tell me a story",
    "why is the sky blue?",
    "how do magnets work?",
    "write a poem about rain",
]


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


def saved_answer(driver, what, timeout):
    """The first assistant message that is saved (it carries its stop reason)."""
    return wait(
        what,
        lambda: [m for m in all_by(driver, "message-assistant") if m.get_attribute("data-stop")],
        timeout,
    )[0]


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
        set_field(d, "setting-max-tokens", "3000", blur="setting-block")
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

        answer = saved_answer(d, "the stopped answer to be saved", 60)
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
        # The stopped answer goes on from where it stopped, in place.
        stopped = by(d, "message-assistant")
        passes = int(stopped.get_attribute("data-passes"))
        by(d, "continue").click()
        grown = wait("the continued answer", lambda: [
            m for m in all_by(d, "message-assistant")
            if m.get_attribute("data-stop") and int(m.get_attribute("data-passes")) > passes], 120)[0]
        assert len(all_by(d, "message-assistant")) == 1 and len(all_by(d, "message-user")) == 1
        print(f"continued: {passes} passes, then {grown.get_attribute('data-passes')} in all, "
              f"stop: {grown.get_attribute('data-stop')}")
        train(d)
    finally:
        d.quit()

    # A conversations file that is not a database: the window says where it was kept and
    # starts a new one.
    db = os.path.join(os.environ["FIXPOINT_HOME"], "chats.sqlite")
    for side in ("-wal", "-shm"):
        if os.path.exists(db + side):
            os.remove(db + side)
    with open(db, "wb") as f:
        f.write(b"this is not a database")
    d = session()
    try:
        notice = wait("the notice", lambda: by(d, "notice").text, 30)
        assert "could not be read" in notice and "unreadable" in notice, notice
        assert titles(d) == [], titles(d)
        kept = [n for n in os.listdir(os.environ["FIXPOINT_HOME"]) if "unreadable" in n]
        assert kept, os.listdir(os.environ["FIXPOINT_HOME"])
        print("unreadable conversations file kept as", kept[0])
    finally:
        d.quit()


def type_over(field, value):
    # clear() can lose to the page re-rendering the old value, and the typed text then lands
    # after it ("128" + "16"): select what is there and type over it, until it reads right.
    for _ in range(5):
        field.clear()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(value)
        if field.get_attribute("value") == value:
            return
    raise AssertionError(f"typed {value!r}, the field reads {field.get_attribute('value')!r}")


def set_field(d, testid, value, blur="train-summary"):
    type_over(by(d, testid), value)
    by(d, blur).click()  # blur: the field's change applies


def train(d):
    by(d, "tab-train").click()
    # WebKitWebDriver types "\n" as Enter without a line break; paste the text as a user would.
    d.execute_script(
        "const t = arguments[0]; t.value = arguments[1]; t.dispatchEvent(new Event('input', {bubbles: true}));",
        by(d, "train-paste"),
        "\n".join(TRAIN_PROMPTS),
    )
    wait("the plan", lambda: "6 prompts: 5 to train on, 1 held out" in by(d, "train-summary").text, 30)
    d.find_element(By.CSS_SELECTOR, ".training details summary").click()
    for testid, value in [("train-block", "4"), ("train-max_new", "16"), ("train-eval_tokens", "16"),
                          ("train-steps", "4"), ("train-checkpoint_every", "2")]:
        set_field(d, testid, value)
    wait("the settings to apply",
         lambda: "Block 4, 16 new tokens per prompt, about 4 updates" in by(d, "train-plan").text, 30)
    set_field(d, "train-name", "e2e-fast")
    wait("the start button", lambda: by(d, "train-start").is_enabled(), 30)
    by(d, "train-start").click()

    wait("the job to finish", lambda: all_by(d, "train-result"), 300, 0.2)
    stages = [by(d, f"train-stage-{s}").get_attribute("data-state")
              for s in ("baseline", "trajectories", "training", "after")]
    assert stages == ["done"] * 4, stages
    points = int(by(d, "train-consistency-chart").get_attribute("data-points"))
    assert points == 4, f"loss curve has {points} points, expected 4 updates"
    tpi = float(by(d, "train-after-tpi").text)
    assert tpi >= 1.0, tpi
    d.execute_script("arguments[0].scrollIntoView()", by(d, "train-job"))
    time.sleep(0.5)
    d.save_screenshot(TRAIN_SCREENSHOT)
    options = d.execute_script(
        "return [...document.querySelectorAll('[data-testid=model-select] option')].map(o => o.textContent)"
    )
    assert any(o.startswith("e2e-fast") and "trained" in o for o in options), options
    print(f"trained: 4 updates, {tpi} tokens per pass after; picker lists {options}")

    by(d, "train-chat").click()
    wait("the trained model to load", lambda: "e2e-fast" in by(d, "model-select").get_attribute("value")
         and "parameters" in by(d, "model-status").text, 60)
    # Settings chosen before the first message are the new conversation's.
    Select(by(d, "setting-mode")).select_by_value("ar")
    by(d, "composer").send_keys("Say something.")
    by(d, "send").click()
    answer = saved_answer(d, "an answer from the trained model", 120)
    assert int(answer.get_attribute("data-passes")) > 0
    assert answer.get_attribute("data-mode") == "ar", answer.get_attribute("data-mode")
    plain = int(answer.get_attribute("data-prompt-tokens"))
    print("the trained model answered:", answer.get_attribute("data-stop"))

    # A system prompt, committed as the field loses focus to the regenerate click, opens the
    # regenerated answer's prompt.
    Select(by(d, "setting-mode")).select_by_value("jacobi")
    by(d, "setting-system-toggle").click()
    by(d, "setting-system").send_keys("Answer in one word.")
    by(d, "regenerate").click()
    answer = wait(
        "the answer regenerated with the system prompt",
        lambda: [m for m in all_by(d, "message-assistant")
                 if m.get_attribute("data-mode").startswith("jacobi")],
        120,
    )[0]
    with_system = int(answer.get_attribute("data-prompt-tokens"))
    assert with_system > plain, (plain, with_system)
    assert "(set)" in by(d, "setting-system-toggle").text
    print(f"system prompt: {plain} prompt tokens without it, {with_system} with it")

    # Editing the question answers it again in place of the old answer.
    by(d, "edit").click()
    type_over(by(d, "edit-text"), "Say something else.")
    by(d, "edit-send").click()
    wait("the edited question's answer", lambda: [m for m in all_by(d, "message-assistant")
                                                    if m.get_attribute("data-stop")]
         and "else" in by(d, "message-user").text and len(all_by(d, "message-assistant")) == 1
         and not all_by(d, "streaming"), 120)
    assert len(all_by(d, "message-user")) == 1
    edited = int(by(d, "message-assistant").get_attribute("data-prompt-tokens"))
    assert edited > with_system, (with_system, edited)
    print(f"edited question answered: {edited} prompt tokens")

    # Deleting the conversation asks first, then removes it from the list.
    before = titles(d)
    d.find_element(By.CSS_SELECTOR, 'button[title="delete"]').click()
    dialog = wait("the delete dialog", lambda: d.switch_to.alert, 10)
    assert "Say something else." in dialog.text, dialog.text
    dialog.accept()
    wait("the conversation to go", lambda: len(titles(d)) == len(before) - 1, 10)
    print("deleted; left:", titles(d))


if __name__ == "__main__":
    main()
    print("e2e: ok")
    sys.exit(0)
