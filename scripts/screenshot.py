"""Screenshot a page (a report file or a URL such as optuna-dashboard's) with Debian's headless Chromium.

    python scripts/screenshot.py lmtune-out/demo/report.html docs/img/report-lora.png
    python scripts/screenshot.py http://127.0.0.1:8080/dashboard/studies/1 docs/img/dashboard.png --height 1100

The window is tall enough for the whole page; the blank space below the page's content is cropped away.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageChops


def screenshot(target: str, out: Path, *, width: int = 1280, height: int = 6000, wait_ms: int = 15000) -> Path:
    url = target if "://" in target else Path(target).resolve().as_uri()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=300)
    image = Image.open(out).convert("RGB")
    blank = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, blank).getbbox()
    if box is not None:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
    image.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="an HTML file or a URL")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000, help="window height; blank space below is cropped")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time the page gets to draw")
    args = parser.parse_args()
    print(screenshot(args.target, args.out, width=args.width, height=args.height, wait_ms=args.wait_ms))


if __name__ == "__main__":
    main()
