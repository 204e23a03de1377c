"""The page at `/`, used as a person would, in Debian's chromium against a live `preempt serve` with keys on.

One walk through the page (one server start, one browser): the key prompt, the model description, two
uploads (a shipped example and a real JPEG photo) with live progress, the result images, the download (the
same bytes as the API's result), the attack demo, a cancel, and the API's errors shown in words; then the
page on a phone-sized screen, labels, keyboard and contrast; and at the end, that the browser asked no host
but the server. Screenshots of the main states go to PREEMPT_SCREENSHOTS (docs/screenshots.sh).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from preempt.keys import KeyStore
from tests.test_models_add import CLASSES
from tests.service.conftest import EXAMPLES, Stack

expect = pytest.importorskip("playwright.sync_api").expect

# A real photograph (CC0, examples/photos/README.md): a JPEG larger than the model's input.
PHOTO = EXAMPLES.parent / "photos" / "chelsea.jpg"
# PGD-20 at the default epsilon turns this shirt into a pullover; protected, it stays a shirt.
SHIRT = EXAMPLES / "04-shirt.png"
JOB_SECONDS = 240_000  # ms: a job's longest expected run on two CPU cores, queue included

# Records every .status text each job card shows, so that short-lived progress states are not missed.
STATUS_LOG = """
window.__statusLog = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    const status = el && el.closest && el.closest('.status');
    if (status) window.__statusLog.push([status.closest('.job').dataset.file, status.textContent]);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("web"), env={"PREEMPT_AUTH": "required"})
    key, _ = KeyStore(stack.redis).create("web-page")
    yield stack, key
    stack.close()


def card(page, name: str):
    return page.locator(f'.job[data-file="{name}"]').first


def drop(page, path: Path) -> None:
    """Drops a file on the page's drop zone, as a drag from the desktop does (a DataTransfer holding the file)."""
    page.evaluate("""([name, b64]) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], name, {type: 'image/png'}));
      const zone = document.querySelector('#drop');
      for (const type of ['dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
      }
    }""", [path.name, base64.b64encode(path.read_bytes()).decode()])


def contrast(page, selector: str) -> float:
    """WCAG contrast ratio of an element's text colour against its nearest opaque background."""
    return page.evaluate("""(sel) => {
      const el = document.querySelector(sel);
      const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
      const lum = ([r, g, b]) => {
        const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
      };
      let bg = el, colour;
      while (bg) {
        const c = rgb(getComputedStyle(bg).backgroundColor);
        if (c.length < 4 || c[3] > 0.99) { colour = c; break; }
        bg = bg.parentElement;
      }
      colour = colour || [255, 255, 255];
      const a = lum(rgb(getComputedStyle(el).color)), b = lum(colour);
      return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    }""", selector)


def test_a_person_protects_compares_downloads_and_attacks_in_a_real_browser(live, browser, shots, tmp_path):
    stack, key = live
    server = urlsplit(stack.base).netloc
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    requests = []
    context.on("request", lambda r: requests.append(r.url))
    context.add_init_script(STATUS_LOG)
    page = context.new_page()
    page.goto(stack.base + "/")

    # Keys are on: the page says so in words, then works once the key is given.
    expect(page.locator("#setup-error")).to_contain_text("needs an API key")
    expect(page.locator("#setup-error")).to_contain_text("HTTP 401")
    expect(page.locator("#key-box")).to_have_attribute("open", "")  # the page opened the key field itself
    page.get_by_label("API key (kept in this tab only)").fill(key)
    page.get_by_label("API key (kept in this tab only)").press("Tab")
    expect(page.locator("#setup-error")).to_be_hidden()
    expect(page.locator("#model option")).not_to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('preempt.apiKey')") == key
    # What the classifier is for, before anybody uploads a cat.
    about = page.locator("#model-about")
    expect(about).to_contain_text("28\u00d728 greyscale")
    expect(about).to_contain_text("Bag")
    expect(about).to_contain_text("a photo of anything else")
    models = [o.get_attribute("value") for o in page.locator("#model option").all()]
    assert "fmnist-linf-ours-12ep" in models and page.locator("#model").input_value() == "fmnist-linf-ours-12ep"
    assert page.locator("#preset").input_value() == "medium"

    # Two images through the file picker: a shipped example and a real JPEG photo (451x300, RGB).
    page.locator("#files").set_input_files([str(SHIRT), str(PHOTO)])
    expect(page.locator("#staged li")).to_have_count(2)
    expect(page.locator("#protect")).to_have_text("Protect 2 images")
    page.screenshot(path=str(shots / "web-start.png"), full_page=True)
    page.locator("#protect").click()

    shirt, photo = card(page, SHIRT.name), card(page, PHOTO.name)
    expect(photo.locator(".status")).to_contain_text("iteration", timeout=JOB_SECONDS)
    page.screenshot(path=str(shots / "web-progress.png"), full_page=True)
    for c in (shirt, photo):
        expect(c).to_have_attribute("data-state", "done", timeout=JOB_SECONDS)
        expect(c.locator(".cancel")).to_be_hidden()
    log = page.evaluate("window.__statusLog")
    assert any(f == PHOTO.name and re.search(r"iteration \d+ of at most \d+", t) for f, t in log), log
    assert any(f == PHOTO.name and t.startswith("Done in") for f, t in log), log

    # The result: both images loaded at the upload's size, the report in words.
    for c, (w, h) in ((shirt, (28, 28)), (photo, (451, 300))):
        for img in ("original", "protected"):
            size = c.locator(f"img.{img}").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            assert size == [w, h], (img, size)
        assert c.locator("canvas.heatmap").evaluate("c => [c.width, c.height]") == [w, h]
    report = shirt.locator(".report")
    expect(report).to_contain_text("Budget used: pixels moved by at most")
    expect(report).to_contain_text("SSIM")
    expect(report).to_contain_text("calls it \u201cShirt\u201d, as it did the original")
    expect(report).to_contain_text("Verified: PGD-20, APGD-CE, APGD-T (9 targets) at epsilon 0.1")
    expect(photo.locator(".report")).to_contain_text(re.compile("calls it \u201c(" + "|".join(map(re.escape, CLASSES)) + ")\u201d"))
    # The slider moves the line between original and protected.
    shirt.locator(".slider").fill("20")
    assert "20%" in shirt.locator("img.protected").evaluate("i => i.style.clipPath")
    shirt.scroll_into_view_if_needed()
    shirt.screenshot(path=str(shots / "web-result.png"))

    # The download is the PNG the API serves for that job.
    with page.expect_download() as d:
        shirt.locator(".download").click()
    download = d.value
    assert download.suggested_filename == "04-shirt-protected.png"
    job_id = shirt.get_attribute("data-job")
    served = stack.http.get(f"/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {key}"})
    assert served.status_code == 200 and Path(download.path()).read_bytes() == served.content

    # "Try to attack it": PGD-20 fools the classifier on the original, not on the protected image.
    shirt.locator(".attack").click()
    expect(shirt).to_have_attribute("data-attack", "done", timeout=JOB_SECONDS)
    rows = shirt.locator(".attack-table tbody tr")
    expect(rows).to_have_count(2)
    original_row, protected_row = shirt.locator('tr[data-row="original"]'), shirt.locator('tr[data-row="protected"]')
    assert original_row.locator("[data-robust]").get_attribute("data-robust") == "false"
    expect(original_row).to_contain_text("fooled")
    assert protected_row.locator("[data-robust]").get_attribute("data-robust") == "true"
    expect(protected_row).to_contain_text("the attack failed")
    for row in (original_row, protected_row):
        assert row.locator("img").evaluate("i => i.complete && i.naturalWidth") == 28
    shirt.screenshot(path=str(shots / "web-attack.png"))

    # Cancel: the photo again at the high preset, cancelled while it waits or runs.
    page.locator("#preset").select_option("high")
    page.locator("#files").set_input_files(str(PHOTO))
    page.locator("#protect").click()
    slow = page.locator(".job").first
    expect(slow.locator(".status")).to_contain_text(re.compile("Queued|iteration|Starting"), timeout=JOB_SECONDS)
    slow.locator(".cancel").click()
    expect(slow).to_have_attribute("data-state", "cancelled", timeout=60_000)
    expect(slow.locator(".status")).to_have_text("Cancelled.")

    # The API's refusals, in words next to the file: 415, 413, 422.
    page.locator("#preset").select_option("low")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2_100_000))  # over this server's 2 MB limit
    page.locator("#files").set_input_files([str(text), str(big)])
    page.locator("#protect").click()
    expect(card(page, "notes.txt").locator(".error")).to_contain_text("not an image this service reads")
    expect(card(page, "notes.txt").locator(".error")).to_contain_text("HTTP 415")
    expect(card(page, "notes.txt").locator(".status")).to_have_text("Refused.")
    expect(card(page, "huge.png").locator(".error")).to_contain_text("too large")
    expect(card(page, "huge.png").locator(".error")).to_contain_text("HTTP 413")
    page.locator("#delta").fill("5")
    page.locator("#files").set_input_files(str(SHIRT))
    page.locator("#protect").click()
    bad_delta = page.locator(".job").first
    expect(bad_delta.locator(".error")).to_contain_text("delta")
    expect(bad_delta.locator(".error")).to_contain_text("HTTP 422")
    page.screenshot(path=str(shots / "web-errors.png"), full_page=True)
    # The service lived on through all of that.
    assert stack.http.get("/readyz").status_code == 200

    # Accessible: every control has a label, the keyboard reaches the file picker and the button, text contrast AA.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, button, canvas[role=img]')]
        .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
                       && e.closest('template') === null)
        .map((e) => e.outerHTML.slice(0, 80))""")
    assert unlabelled == []
    page.locator("#model").focus()
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert "files" in reached and "delta" in reached, reached
    for selector in ("body", ".hint", "label", "#protect", ".button.secondary", ".error", "footer"):
        assert contrast(page, selector) >= 4.5, selector

    # A phone-sized screen: nothing wider than the screen; the result still shows both images.
    phone = page
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.reload()
    expect(phone.locator("#model option")).not_to_have_count(0)  # the key is still in this tab's session
    drop(phone, EXAMPLES / "01-pullover.png")  # dragged onto the drop zone this time
    expect(phone.locator("#staged li")).to_have_text(re.compile("01-pullover.png"))
    # with texture masking, ticked from its label: the report says whether the shaped change was written
    phone.get_by_label("Shape the change by the image").check()
    phone.locator("#protect").click()
    expect(phone.locator(".job").first).to_have_attribute("data-state", "done", timeout=JOB_SECONDS)
    expect(phone.locator(".job").first.locator(".report")).to_contain_text(
        re.compile("Shaped by the image|Not shaped: the check rejected"))
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.screenshot(path=str(shots / "web-phone.png"), full_page=True)

    # Nothing but the server was asked for anything (blob: URLs are the page's own images).
    hosts = {urlsplit(u).netloc for u in requests if not u.startswith(("blob:", "data:"))}
    assert hosts == {server}, hosts
    context.close()
