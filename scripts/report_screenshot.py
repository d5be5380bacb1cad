"""Screenshot of a test.py report in headless Chromium, as docs/report_bsdata.png shows it: the top of the page (run,
figures, plots), the false-alarm gallery, and the threshold explorer moved to --explore.

    python train.py --category bsdata --data-root ../shared/data --backbone mobilenet_v2 \\
        --teacher-weights ../shared/weights/mobilenet_v2_imagenet_dequant.pth --image-size 128 --epochs 8
    python test.py --category bsdata
    python scripts/report_screenshot.py runs/bsdata/version_0/report.html docs/report_bsdata.png --explore 6

Needs selenium (the dev extras) and Chromium with chromedriver (`make browser`).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.keys import Keys

WIDTH, TOP = 1240, 1357


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--explore", type=float, help="image threshold to move the explorer to")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},1500",
                     "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers or report statistics online
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome") or ""
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(args.page.resolve().as_uri())
        top = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").crop((0, 0, WIDTH, TOP))
        driver.set_window_size(WIDTH, driver.execute_script("return document.body.scrollHeight") + 200)
        if args.explore is not None:
            box = driver.find_element("id", "explorer-value")
            box.clear()
            box.send_keys(repr(args.explore), Keys.ENTER)
            driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", box)
        parts = [top] + [Image.open(io.BytesIO(driver.find_element("id", name).screenshot_as_png)).convert("RGB")
                         for name in ("false-alarms", "explorer")]
    finally:
        driver.quit()
    sheet = Image.new("RGB", (WIDTH, sum(p.height for p in parts) + 20 * len(parts)), "white")
    y = 0
    for k, part in enumerate(parts):
        sheet.paste(part, (0 if k == 0 else 28, y))
        y += part.height + 20
    sheet.quantize(colors=160, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
    print(f"{args.output}: {sheet.size[0]}x{sheet.size[1]}")


if __name__ == "__main__":
    main()
