"""Each exported page opened in real headless Chromium with the network shut, driven over the DevTools
protocol (--remote-debugging-pipe): no JavaScript error or console error, every plot drawn (read back from
the DOM), and the WebGL surfaces really painted (pixels of the page's screenshot)."""
import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from fasland.cli import main
from export_fixtures import write_conflicts, write_hessian, write_surface

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; `make sysdeps`)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader", "--hide-scrollbars",
         "--remote-debugging-pipe"]
WINDOW = (1700, 1250)
BENIGN = ("GL Driver Message", "software WebGL", "willReadFrequently")   # Chromium's notes on software WebGL

# What each plot put in the DOM (evaluated in the page once plotly has drawn).
REPORT = """JSON.stringify({plotly: typeof Plotly, plots: Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  traces: (gd._fullData || []).length,
  contourPaths: gd.querySelectorAll('.cartesianlayer .contourlevel path').length,
  lines: gd.querySelectorAll('.cartesianlayer path.js-line').length,
  heatmaps: gd.querySelectorAll('.cartesianlayer .hm image').length,
  menus: gd.querySelectorAll('.updatemenu-header').length,
  scenes: Array.from(gd.querySelectorAll('.gl-container > div')).map(d => {
    const r = d.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }),
}))})"""


class Browser:
    """Headless Chromium on a DevTools pipe: commands on fd 3, replies and events on fd 4, NUL-separated JSON."""

    def __init__(self, profile):
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()

        def wire():  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"],
                                     preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.buf, self.n, self.events, self.session = b"", 0, [], None

    def _next(self, deadline):
        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.out_r], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "Chromium stopped answering"
            chunk = os.read(self.out_r, 1 << 20)
            assert chunk, "Chromium exited"
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, timeout=60, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params, **({"sessionId": self.session} if self.session else {})}
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline)
            if m.get("id") == self.n:
                assert "error" not in m, m["error"]
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._next(deadline))

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text"))
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return [t for t in out if not any(b in str(t) for b in BENIGN)]

    def close(self):
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.out_r)


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (a fresh profile); each page gets its own tab."""
    with tempfile.TemporaryDirectory() as profile:
        b = Browser(profile)
        try:
            yield b
        finally:
            b.close()


# Picks an entry of the first plot's array menu the way a user does (click the header, then the entry).
MENU = """(async () => {
  const gd = document.querySelector('.js-plotly-plot');
  gd.querySelector('.updatemenu-header').dispatchEvent(new MouseEvent('click', {bubbles: true}));
  await new Promise(r => setTimeout(r, 300));
  const entries = Array.from(gd.querySelectorAll('.updatemenu-dropdown-button'));
  entries.find(b => b.textContent === '%s').dispatchEvent(new MouseEvent('click', {bubbles: true}));
  await new Promise(r => setTimeout(r, 1000));
  return {entries: entries.map(b => b.textContent), shown: gd.querySelector('.updatemenu-header').textContent,
          cmin: gd._fullLayout.coloraxis.cmin, cmax: gd._fullLayout.coloraxis.cmax,
          z: gd._fullData.filter(t => t.type === 'surface').map(t => t.z)};
})()"""


def open_page(b: Browser, page, tmp_path, then: str | None = None):
    """(JS errors, DOM report, screenshot pixels[, value of `then`]) of the page in a new tab, once every
    plot has drawn; `then` is a script run after the screenshot."""
    b.session, b.events = None, []
    target = b.send("Target.createTarget", url="about:blank")["targetId"]
    b.session = b.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        for domain in ("Page", "Runtime", "Log"):
            b.send(f"{domain}.enable")
        b.send("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1, mobile=False)
        b.send("Page.navigate", url=page.as_uri())
        b.wait_for("Page.loadEventFired", timeout=90)
        # plotly draws asynchronously (WebGL scenes, contour labels): wait until the DOM stops changing
        last, report = None, None
        for _ in range(120):
            report = b.send("Runtime.evaluate", expression=REPORT, returnByValue=True)["result"]["value"]
            if report == last:
                break
            last = report
            time.sleep(0.3)
        b.send("Runtime.evaluate", expression="new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))",
               awaitPromise=True)
        shot = b.send("Page.captureScreenshot", format="png", timeout=90)["data"]
        after = None
        if then:
            res = b.send("Runtime.evaluate", expression=then, awaitPromise=True, returnByValue=True, timeout=90)
            assert "exceptionDetails" not in res, res["exceptionDetails"]
            after = res["result"]["value"]
        errors = b.errors()
    finally:
        b.session = None
        b.send("Target.closeTarget", targetId=target)
    img = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
    img.save(tmp_path / f"{page.stem}_chromium.png")
    out = (errors, json.loads(report), np.asarray(img).astype(int))
    return out + (after,) if then else out


def hue(img) -> np.ndarray:
    return (img.max(axis=-1) - img.min(axis=-1)) > 40


def test_surface_page_renders_in_chromium(browser, tmp_path):
    paths = [tmp_path / f"{m}.h5" for m in ("erm", "sam", "gacfas")]
    for p, scale in zip(paths, (1.0, 0.5, 0.25)):
        write_surface(p, nx=21, ny=17, scale=scale, missing=[(20, 16)], blowup=[(0, 0)])
    page = tmp_path / "surfaces.html"
    assert main(["export", "html", *map(str, paths), "--out", str(page), "--labels", "ERM,SAM,GAC-FAS"]) == 0
    errors, report, img, menu = open_page(browser, page, tmp_path, then=MENU % "acc_C")
    assert errors == [] and report["plotly"] == "object"
    (plot,) = report["plots"]
    assert plot["traces"] == 12 and plot["menus"] == 1
    assert plot["contourPaths"] > 30 and plot["lines"] == 3           # contour levels and the 3 training paths drawn
    assert len(plot["scenes"]) == 3
    for x, y, w, h in plot["scenes"]:                                  # each WebGL scene really painted its surface
        assert w > 200 and h > 200
        region = img[int(y):int(y + h), int(x):int(x + w)]
        assert hue(region).mean() > 0.05, (x, y, w, h)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000
    # the array menu, clicked in the browser, switches every surface and the shared colour scale to acc_C
    assert menu["shown"] == "acc_C" and len(menu["entries"]) == 14
    truth = []
    for p in paths:
        with h5py.File(p) as f:
            raw, done = f["acc_C"][()].reshape(17, 21), f["done"][()].reshape(17, 21).astype(bool)
        truth.append(np.where(done, raw, np.nan))
    assert menu["cmin"] == pytest.approx(min(np.nanmin(t) for t in truth))
    assert menu["cmax"] == pytest.approx(max(np.nanmax(t) for t in truth))
    for z, t in zip(menu["z"], truth):
        np.testing.assert_allclose(np.array(z, dtype=float), t)     # null (not done) comes back as nan


def test_curve_and_analysis_pages_render_in_chromium(browser, tmp_path):
    line = tmp_path / "line.h5"
    write_surface(line, nx=41, one_d=True, missing=[(7,)])
    h1, h2, conf = tmp_path / "erm.json", tmp_path / "sam.json", tmp_path / "conf.json"
    write_hessian(h1, "erm")
    write_hessian(h2, "sam", scale=0.4)
    write_conflicts(conf, "gacfas")
    pages = {"curves": [line], "analysis": [h1, h2, conf]}
    for name, inputs in pages.items():
        page = tmp_path / f"{name}.html"
        assert main(["export", "html", *map(str, inputs), "--out", str(page)]) == 0
        errors, report, img = open_page(browser, page, tmp_path)
        assert errors == [] and report["plotly"] == "object", name
        if name == "curves":
            (plot,) = report["plots"]
            assert plot["traces"] == 14 and plot["lines"] == 28       # every curve, broken in two at the missing point
        else:
            hess, confl = report["plots"]
            assert hess["traces"] == hess["lines"] == 2 * 5   # two files × (density, eigenvalues, 3 domains)
            assert confl["heatmaps"] == 6 and confl["lines"] == 8     # 6 points' heatmaps; θ's 3 pairs + 5 means over epochs
        assert hue(img).sum() > 5000 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200, name   # curves, heatmaps drawn
