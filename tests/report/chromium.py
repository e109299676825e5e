"""Load a page in Debian's headless Chromium and say what rendered: a real browser, not an HTML parser.

A hook script goes first in the page's head: it records JavaScript errors (``error`` events, rejected promises,
``console.error``) and, once the page has loaded, writes how many report figures hold a drawn plotly SVG into
the DOM that ``--dump-dom`` prints, with each figure's layout as drawn: its panels' plot areas, its annotations
(text and box) and its y-axis titles.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HOOK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + String(e.reason)));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push('console: ' + args.join(' ')); __consoleError(...args); };
window.addEventListener('load', () => setTimeout(() => {
  const figures = [...document.querySelectorAll('.lmtune-figure')];
  const drawn = figures.filter(f => { const svg = f.querySelector('svg.main-svg');
    return svg && svg.getBoundingClientRect().width > 100 && f.querySelector('.trace, .parcoords') !== null; });
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.right, r.top, r.bottom]; };
  const layout = figures.map(f => ({
    panels: [...f.querySelectorAll('.draglayer .nsewdrag')].map(box),
    notes: [...f.querySelectorAll('g.annotation')].map(a => ({text: a.textContent, box: box(a)})),
    titles: [...f.querySelectorAll('.g-ytitle, .g-y2title')].map(t => t.textContent)}));
  document.body.setAttribute('data-check', JSON.stringify(
    {figures: figures.length, drawn: drawn.length, errors: window.__errors, layout: layout}));
}, 1000));
</script>"""


def chromium() -> str:
    """The Chromium binary; skips the test without one, except in CI (``CI`` set), where it fails."""
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def render(page: Path) -> dict:
    """``{"figures", "drawn", "errors", "layout"}`` of ``page`` loaded in headless Chromium; boxes are
    ``[left, right, top, bottom]`` in CSS pixels."""
    hooked = page.with_name("hooked-" + page.name)
    hooked.write_text(page.read_text().replace("<head>", "<head>" + HOOK, 1))
    profile = page.parent / "chromium-profile"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--window-size=1280,2000", "--virtual-time-budget=30000", "--dump-dom",
         hooked.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    start = result.stdout.find('data-check="')
    assert start >= 0, f"the page did not finish loading: {result.stderr[-2000:]}"
    start += len('data-check="')
    return json.loads(html.unescape(result.stdout[start:result.stdout.index('"', start)]))
