"""``sharpgen explore``: the explorer page served by the standard library's ``http.server``.

Bound to 127.0.0.1 only (no option to listen elsewhere) and offline: the page (``static/``:
plain HTML, CSS and JavaScript, no build step, no external resources) talks to a JSON API:

* ``GET /api/config`` -- sliders, units, colour scale (:meth:`ExploreSession.config`);
* ``POST /api/render`` -- ``{base, edits}`` -> image, measured parameters, nearest real patches;
* ``POST /api/upload`` -- a FITS file as the raw body (``X-Filename`` header) -> inverted base.

Errors the user can fix come back as HTTP 400 ``{"error": message}`` and are shown on the page;
anything else as HTTP 500 with a one-line message (the traceback goes to the server's log, never
to the page). Requests whose ``Host`` is not this machine's loopback name are refused (a web page
elsewhere cannot reach the explorer through DNS rebinding).
"""

from __future__ import annotations

import json
import logging
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import unquote, urlparse

from sharpgen.explore.session import MAX_UPLOAD, ExploreError, ExploreSession

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


def static_file(name: str) -> bytes:
    return resources.files("sharpgen.explore").joinpath("static", name).read_bytes()


def make_handler(session: ExploreSession, port_holder: dict):
    class Handler(BaseHTTPRequestHandler):
        server_version = "sharpgen-explore"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # requests at DEBUG, not on stderr
            logger.debug("%s " + fmt, self.address_string(), *args)

        # ---- helpers -------------------------------------------------------------------------
        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

        def _host_ok(self) -> bool:
            host = (self.headers.get("Host") or "").lower()
            allowed = {f"{h}:{port_holder['port']}" for h in (HOST, "localhost")}
            if host in allowed:
                return True
            self._json(403, {"error": f"requests must be addressed to http://{HOST}:{port_holder['port']}/"})
            return False

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_UPLOAD:
                raise ExploreError(f"request body of {n / 2**20:.1f} MB is larger than {MAX_UPLOAD // 2**20} MB")
            return self.rfile.read(n) if n > 0 else b""

        def _api(self, fn) -> None:
            try:
                self._json(200, fn())
            except ExploreError as err:
                self._json(400, {"error": " ".join(str(err).split())})
            except Exception as err:  # noqa: BLE001 -- never a stack trace on the page
                logger.exception("explore: internal error")
                self._json(500, {"error": f"internal error: {type(err).__name__}: {' '.join(str(err).split())}"})

        # ---- routes --------------------------------------------------------------------------
        def do_GET(self):  # noqa: N802
            if not self._host_ok():
                return
            path = urlparse(self.path).path
            if path in ("/", "/index.html"):
                return self._send(200, static_file("index.html"), STATIC["index.html"])
            if path.startswith("/static/") and path[len("/static/"):] in STATIC:
                name = path[len("/static/"):]
                return self._send(200, static_file(name), STATIC[name])
            if path == "/api/config":
                return self._api(session.config)
            self._json(404, {"error": f"no such page: {path}"})

        def do_POST(self):  # noqa: N802
            if not self._host_ok():
                return
            path = urlparse(self.path).path

            def render():
                try:
                    req = json.loads(self._body() or b"{}")
                except json.JSONDecodeError as err:
                    raise ExploreError(f"the request is not valid JSON ({err})") from None
                return session.render(req)

            def upload():
                name = unquote(self.headers.get("X-Filename") or "upload.fits")
                return session.upload(self._body(), name)

            routes = {"/api/render": render, "/api/upload": upload}
            if path not in routes:
                return self._json(404, {"error": f"no such endpoint: {path}"})
            self._api(routes[path])

    return Handler


def serve(session: ExploreSession, port: int = 8765) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` (0: any free port; ``server.server_port`` tells which)."""
    holder = {"port": port}
    httpd = ThreadingHTTPServer((HOST, int(port)), make_handler(session, holder))
    httpd.daemon_threads = True
    holder["port"] = httpd.server_port
    return httpd


def run_explore(args) -> int:
    """``sharpgen explore`` (options: :func:`sharpgen.cli.add_explore_parser`)."""
    import torch

    if args.threads:  # inversions of uploads (batched restarts); each view uses render_threads
        torch.set_num_threads(int(args.threads))
    print(f"loading the pipeline from {args.results} ...", flush=True)
    session = ExploreSession(args.results, k=args.k, device=args.device, render_threads=args.render_threads)
    try:
        httpd = serve(session, args.port)
    except OSError as err:
        raise OSError(f"cannot listen on {HOST}:{args.port}: {err.strerror or err} (choose another --port)") from None
    print(f"sharpgen explore: serving on http://{HOST}:{httpd.server_port}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        httpd.server_close()
    return 0
