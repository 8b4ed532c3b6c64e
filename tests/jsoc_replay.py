"""A JSOC replay server on 127.0.0.1 for offline tests of :mod:`sharpgen.jsoc`.

Built from real material only: the JSON answers JSOC gave in 2020 (``shared/data/jsoc/``) are the
templates of every answer, and the real SHARP FITS files (``shared/data/sharp/``) are both the
record catalogue (keyword values read from their headers) and the exported files served.

Endpoints (the layout ``drms.ServerConfig`` builds from a base URL):

- ``/cgi-bin/ajax/jsoc_info?op=series_struct&ds=S`` -> the recorded ``series_struct.S.json``
- ``/cgi-bin/ajax/jsoc_info?op=rs_list&ds=...&key=...`` -> the recorded rs_list structure
  (``keywords``/``segments``/``links``/``count``/``runtime``/``status``) with the keys asked for,
  for the catalogue records that match the record set (``series[harp][t0-t1@cadence]``,
  comma-separated lists of those, ``{segments}``); values are strings as JSOC sends them
  (QUALITY as ``0x%08x``), keys a record lacks get the series default from series_struct.
- ``/cgi-bin/ajax/checkAddress.sh?address=...&checkonly=1`` -> the recorded "registered" answer
  for :attr:`Scenario.registered`, the recorded "empty" answer for no address, status 4 otherwise.
- ``/cgi-bin/ajax/jsoc_fetch?op=exp_request&...`` -> the recorded ``exp_request.url_fits.json``
  (status 2, queued) with a fresh request id.
- ``/cgi-bin/ajax/jsoc_fetch?op=exp_status&requestid=...`` -> :attr:`Scenario.pending` statuses
  one poll after another, then the recorded ``exp_status.done.json`` with ``dir`` and ``data`` for
  the requested records (or :attr:`Scenario.export_error`).
- ``/<dir>/<filename>`` -> the real FITS bytes, subject to the per-file fault switches.

Use as a context manager; the server stops itself after ``lifetime_s`` in any case.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REGISTERED_EMAIL = "sharpgen.tester@example.org"
EXPORT_DIR_BASE = 1278070722  # the recorded exp_status "dir" is /SUM66/D1278070722/S00000


@dataclass
class Scenario:
    """Fault switches; file switches are keyed by export file name (``...Br.fits``)."""

    registered: tuple[str, ...] = (REGISTERED_EMAIL,)
    #: statuses exp_status answers before "done" (drms: 1, 2, 6 pending)
    pending: tuple[int, ...] = ()
    #: (status, JSOC error text) answered by exp_status once ``pending`` is used up
    export_error: tuple[int, str] | None = None
    #: number of HTTP 500 answers per CGI op ("rs_list", "exp_request", "exp_status", ...); -1 = always
    cgi_500: dict[str, int] = field(default_factory=dict)
    #: number of HTTP 500 answers per file before it is served; -1 = always
    file_500: dict[str, int] = field(default_factory=dict)
    #: number of answers that announce the full Content-Length but send only half the bytes
    file_truncate: dict[str, int] = field(default_factory=dict)
    #: number of answers that send a file cut to half (with a matching Content-Length)
    file_short: dict[str, int] = field(default_factory=dict)
    #: seconds to sleep after each 16 kB chunk of a file (for kill-mid-download tests)
    file_delay_s: dict[str, float] = field(default_factory=dict)
    #: extra catalogue records (keyword dicts, e.g. limb or no-NOAA copies) that have no file
    extra_records: list[dict] = field(default_factory=list)


def _parse_time(s: str) -> datetime:
    s = s.strip().removesuffix("_TAI")
    for fmt in ("%Y.%m.%d_%H:%M:%S", "%Y.%m.%d_%H:%M", "%Y.%m.%d"):
        try:
            return datetime.strptime(s, fmt)
        except ValueError:
            pass
    raise ValueError(f"bad DRMS time {s!r}")


def _parse_cadence(s: str) -> timedelta:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", s.strip())
    if not m:
        raise ValueError(f"bad DRMS cadence {s!r}")
    return timedelta(seconds=float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])


_SUBSET_RE = re.compile(r"([\w.]+)((?:\[[^\]]*\])*)(?:\{([^}]*)\})?")


def _split_recordsets(ds: str) -> list[str]:
    """Split ``a[..][..]{..},b[..]`` at top-level commas (not inside [] or {})."""
    out, depth, cur = [], 0, ""
    for ch in ds:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


class Catalog:
    """Records (keyword dicts) of the real Br files, plus extras."""

    def __init__(self, shared_data: Path, extra: list[dict]):
        from astropy.io import fits

        self.sharp_dir = Path(shared_data) / "sharp"
        self.jsoc_dir = Path(shared_data) / "jsoc"
        self.records: list[dict] = []
        for p in sorted(self.sharp_dir.glob("hmi.sharp_cea_720s.*.Br.fits")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(p) as hdul:
                    hdr = hdul[-1].header
                    rec = {}
                    for card in hdr.cards:
                        if not card.keyword or card.keyword in ("COMMENT", "HISTORY"):
                            continue
                        try:
                            rec[card.keyword] = card.value
                        except Exception:  # noqa: BLE001 - JSOC cards such as R_VALUE = 'nan'
                            rec[card.keyword] = card.image[10:].split("/")[0].strip().strip("'").strip()
            rec["_series"] = "hmi.sharp_cea_720s"
            self.records.append(rec)
        for e in extra:
            rec = dict(e)
            rec.setdefault("_series", "hmi.sharp_cea_720s")
            self.records.append(rec)
        self.struct = {
            p.name[len("series_struct.") : -len(".json")]: json.loads(p.read_text())
            for p in self.jsoc_dir.glob("series_struct.*.json")
        }

    def match(self, ds: str) -> list[dict]:
        """Catalogue records selected by the record set ``ds`` (order kept, no duplicates)."""
        out: list[dict] = []
        for sub in _split_recordsets(ds):
            m = _SUBSET_RE.fullmatch(sub)
            if not m:
                raise ValueError(f"bad record set {sub!r}")
            series, brackets = m.group(1).lower(), re.findall(r"\[([^\]]*)\]", m.group(2) or "")
            harp_spec = brackets[0].strip() if len(brackets) > 0 else ""
            time_spec = brackets[1].strip() if len(brackets) > 1 else ""
            for rec in self.records:
                if rec["_series"] != series:
                    continue
                if harp_spec and int(rec["HARPNUM"]) not in {int(x) for x in harp_spec.split(",")}:
                    continue
                if time_spec and not _time_matches(_parse_time(rec["T_REC"]), time_spec):
                    continue
                if not any(r is rec for r in out):
                    out.append(rec)
        return out

    def value(self, rec: dict, key: str, series: str) -> str:
        """A keyword value as JSOC's rs_list sends it (a string)."""
        if key in rec:
            v = rec[key]
            if key == "QUALITY":
                return f"0x{int(v):08x}"
            return str(v)
        for k in self.struct[series]["keywords"]:
            if k["name"] == key:
                return str(k["defval"])
        raise KeyError(key)

    def filename(self, rec: dict, segment: str) -> str:
        t = rec["T_REC"].replace(".", "").replace(":", "").replace("-", "")
        return f"{rec['_series']}.{int(rec['HARPNUM'])}.{t}.{segment}.fits"


def _time_matches(t: datetime, spec: str) -> bool:
    cadence = None
    if "@" in spec:
        spec, cad = spec.split("@", 1)
        cadence = _parse_cadence(cad)
    if "-" in spec:
        a, b = spec.split("-", 1)
        t0, t1 = _parse_time(a), _parse_time(b)
        if not (t0 <= t <= t1):
            return False
        if cadence is not None and (t - t0) % cadence != timedelta(0):
            return False
        return True
    return _parse_time(spec) == t


class ReplayServer:
    """Threaded HTTP server replaying JSOC; ``url`` is the base URL for ``drms.ServerConfig``."""

    def __init__(self, shared_data: Path, scenario: Scenario | None = None, *, lifetime_s: float = 120.0):
        self.shared_data = Path(shared_data)
        self.scenario = scenario or Scenario()
        self.catalog = Catalog(self.shared_data, self.scenario.extra_records)
        self.templates = {
            p.stem: json.loads(p.read_text()) for p in (self.shared_data / "jsoc").glob("*.json")
        }
        self.lifetime_s = lifetime_s
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, dict]] = []  # (method, path, query) of every request
        self.file_gets: list[tuple[str, int]] = []  # (file name, HTTP status)
        self.exports: dict[str, dict] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ReplayServer":
        server = self

        class Handler(_Handler):
            replay = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 16
        t = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        w = threading.Thread(target=self._watchdog, daemon=True)
        self._threads = [t, w]
        t.start()
        w.start()
        return self

    def _watchdog(self) -> None:
        if not self._stop.wait(self.lifetime_s):
            self._shutdown()

    def _shutdown(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._shutdown()
            for t in self._threads:
                t.join(timeout=5)

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------------------------
    def take(self, kind: str, name: str, budget: dict[str, int]) -> bool:
        """True if the fault ``kind`` for ``name`` fires now (counts down, -1 = forever)."""
        n = budget.get(name, 0)
        if n == 0:
            return False
        if n < 0:
            return True
        with self.lock:
            used = self._counters.get((kind, name), 0)
            if used >= n:
                return False
            self._counters[(kind, name)] = used + 1
            return True

    def requests_for(self, op: str) -> list[dict]:
        return [q for _, _, q in self.log if q.get("op") == op]


class _Handler(BaseHTTPRequestHandler):
    replay: ReplayServer
    protocol_version = "HTTP/1.0"
    timeout = 10

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str = "application/json", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode("latin1"))

    def do_GET(self) -> None:  # noqa: N802
        r = self.replay
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with r.lock:
            r.log.append(("GET", parts.path, query))
        try:
            if parts.path.startswith("/cgi-bin/ajax/"):
                cgi = parts.path.rsplit("/", 1)[-1]
                op = query.get("op", cgi)
                if r.take("cgi500", op, r.scenario.cgi_500):
                    self._send(500, b"Internal Server Error", "text/plain")
                    return
                handler = {
                    "jsoc_info": self._jsoc_info,
                    "jsoc_fetch": self._jsoc_fetch,
                    "checkAddress.sh": self._check_address,
                }.get(cgi)
                if handler is None:
                    self._send(404, b"no such CGI", "text/plain")
                else:
                    handler(query)
            else:
                self._file(parts.path)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- CGIs ---------------------------------------------------------------------------------
    def _jsoc_info(self, q: dict) -> None:
        r = self.replay
        op = q.get("op")
        if op == "series_struct":
            name = q.get("ds", "").lower()
            if name in r.catalog.struct:
                self._json(r.catalog.struct[name])
            else:
                self._json({"status": 1, "error": f"Can not open series {name}"})
        elif op == "rs_list":
            ds = q.get("ds", "")
            series = ds.split("[", 1)[0].strip().lower()
            if series not in r.catalog.struct:
                self._json({"status": 1, "error": f"Can not open series {series}"})
                return
            try:
                recs = r.catalog.match(ds)
            except ValueError as exc:
                self._json({"status": 1, "error": str(exc)})
                return
            if "n" in q:
                n = int(q["n"])
                recs = recs[:n] if n >= 0 else recs[n:]
            keys = [k for k in re.split(r"[\s,]+", q.get("key", "")) if k]
            out = copy.deepcopy(r.templates["rs_list.hmi.M_45s"])
            try:
                out["keywords"] = [
                    {"name": k, "values": [r.catalog.value(rec, k, series) for rec in recs]} for k in keys
                ]
            except KeyError as exc:
                self._json({"status": 1, "error": f"Invalid KeyLink {exc.args[0]}"})
                return
            out["segments"], out["links"] = [], []
            out["count"], out["runtime"], out["status"] = len(recs), 0.01, 0
            self._json(out)
        else:
            self._json({"status": 1, "error": f"unsupported op {op!r}"})

    def _check_address(self, q: dict) -> None:
        r = self.replay
        # drms quote_plus()es the address before urlencode: decode twice
        from urllib.parse import unquote_plus

        address = unquote_plus(q.get("address", ""))
        if not address:
            self._json(r.templates["checkAddress.empty"])
        elif address in r.scenario.registered:
            self._json(r.templates["checkAddress.registered"])
        else:
            self._json({"msg": "Email address has neither been validated nor registered.", "status": 4})

    def _jsoc_fetch(self, q: dict) -> None:
        r = self.replay
        op = q.get("op")
        if op == "exp_request":
            if q.get("notify") not in r.scenario.registered:
                self._json({"status": 4, "error": "Invalid email address (notify)"})
                return
            ds = q.get("ds", "")
            try:
                recs = r.catalog.match(ds)
            except ValueError as exc:
                self._json({"status": 4, "error": f"Bad record-set subset specification: {exc}"})
                return
            m = re.search(r"\{([^}]*)\}", ds)
            segment = m.group(1).split(",")[0] if m else "Br"
            with r.lock:
                n = len(r.exports) + 1
                rid = f"JSOC_20200410_{n:03d}"
                r.exports[rid] = {"records": recs, "segment": segment, "polls": 0, "query": q, "n": n}
            out = copy.deepcopy(r.templates["exp_request.url_fits"])
            out.update(requestid=rid, method=q.get("method"), protocol=q.get("protocol"), rcount=len(recs))
            self._json(out)
        elif op == "exp_status":
            rid = q.get("requestid", "")
            exp = r.exports.get(rid)
            if exp is None:
                self._json({"status": 6, "requestid": rid, "error": f"Export request {rid} not found"})
                return
            with r.lock:
                i = exp["polls"]
                exp["polls"] += 1
            if i < len(r.scenario.pending):
                self._json({"status": r.scenario.pending[i], "requestid": rid, "wait": 0})
                return
            if r.scenario.export_error is not None:
                status, msg = r.scenario.export_error
                self._json({"status": status, "requestid": rid, "error": msg})
                return
            out = copy.deepcopy(r.templates["exp_status.done"])
            out["requestid"] = rid
            out["method"], out["protocol"] = exp["query"].get("method"), exp["query"].get("protocol")
            out["dir"] = f"/SUM66/D{EXPORT_DIR_BASE + exp['n'] - 1}/S00000"
            out["count"] = str(len(exp["records"]))
            out["data"] = [
                {
                    "record": f"{rec['_series']}[{int(rec['HARPNUM'])}][{rec['T_REC']}]",
                    "filename": r.catalog.filename(rec, exp["segment"]),
                }
                for rec in exp["records"]
            ]
            self._json(out)
        else:
            self._json({"status": 4, "error": f"unsupported op {op!r}"})

    # -- files --------------------------------------------------------------------------------
    def _file(self, path: str) -> None:
        r = self.replay
        name = path.rsplit("/", 1)[-1]
        src = r.catalog.sharp_dir / name
        if not re.fullmatch(r"/SUM\d+/D\d+/S\d+/[\w.\-]+", path) or not src.is_file():
            with r.lock:
                r.file_gets.append((name, 404))
            self._send(404, b"Not Found", "text/plain")
            return
        sc = r.scenario
        if r.take("500", name, sc.file_500):
            with r.lock:
                r.file_gets.append((name, 500))
            self._send(500, b"Internal Server Error", "text/plain")
            return
        data = src.read_bytes()
        length = len(data)
        if r.take("truncate", name, sc.file_truncate):
            data = data[: len(data) // 2]  # announce `length`, send half, close
        elif r.take("short", name, sc.file_short):
            data = data[: len(data) // 2]
            length = len(data)
        with r.lock:
            r.file_gets.append((name, 200))
        self.send_response(200)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        delay = sc.file_delay_s.get(name, 0.0)
        for i in range(0, len(data), 16384):
            self.wfile.write(data[i : i + 16384])
            if delay:
                self.wfile.flush()
                time.sleep(delay)
        self.close_connection = True
