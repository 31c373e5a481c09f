"""Render docs/report.png: the top of the demo's report in headless Chromium.

    make demo && .venv/bin/python docs/report_screenshot.py [--run runs/demo]

It runs ``delift-ray report`` on the run as a user would, opens the page in Chromium
(Debian's package) and keeps the first ``--height`` pixels of the page, scaled to half
width so the file stays small.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    ap.add_argument("--height", type=int, default=2600)
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page, shot = Path(tmp) / "report.html", Path(tmp) / "shot.png"
        subprocess.run([sys.executable, "-m", "delift_ray.cli", "report", args.run, "--out", str(page)], check=True)
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp}/profile", f"--window-size=1280,{args.height}", f"--screenshot={shot}",
             "--virtual-time-budget=10000", page.as_uri()],
            check=True, capture_output=True,
        )  # fmt: skip
        from PIL import Image

        img = Image.open(shot).convert("RGB")
        img = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
        img.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
