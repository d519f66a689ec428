#!/usr/bin/env python3
"""Screenshot a live page with headless Chromium after it has run for a while
in real time: screenshot.py URL OUT.png [SECONDS] [WIDTHxHEIGHT].

`chromium --screenshot` shoots at load, or after a virtual-time budget in
which the page's timers fire within milliseconds of real time; the stats
page's rates need real seconds between samples. So this drives Chromium over
the DevTools protocol on a pipe (fds 3 and 4, NUL-terminated JSON), with the
standard library only. Used by tests/stats.rs to make docs/stats.png.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time


def main():
    url, out = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    width, height = map(int, (sys.argv[4] if len(sys.argv) > 4 else "1180x560").split("x"))
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="ringlb-shot-")
    # A file, not a pipe: an unread pipe would stall a chatty Chromium.
    log = tempfile.TemporaryFile()

    def child_fds():
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    chrome = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--remote-debugging-pipe", "about:blank"],
        preexec_fn=child_fds, pass_fds=(3, 4),
        stdout=subprocess.DEVNULL, stderr=log)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    writer = os.fdopen(to_chrome_w, "wb")
    reader = os.fdopen(from_chrome_r, "rb")
    pending = b""
    next_id = 0

    def call(method, params=None, session=None):
        nonlocal pending, next_id
        next_id += 1
        msg = {"id": next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        writer.write(json.dumps(msg).encode() + b"\0")
        writer.flush()
        while True:
            while b"\0" not in pending:
                chunk = reader.read1(65536)
                if not chunk:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    sys.exit(f"screenshot.py: chromium closed the pipe during {method}:\n{tail}")
                pending += chunk
            raw, pending = pending.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == next_id:
                if "error" in reply:
                    sys.exit(f"screenshot.py: {method}: {reply['error']}")
                return reply["result"]

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        call("Emulation.setDeviceMetricsOverride",
             {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        call("Page.navigate", {"url": url}, session)
        time.sleep(seconds)
        shot = call("Page.captureScreenshot", {"format": "png"}, session)
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    finally:
        chrome.kill()
        chrome.wait()
        subprocess.run(["rm", "-rf", profile], check=False)


if __name__ == "__main__":
    main()
