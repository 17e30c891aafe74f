"""`lcmsquant review`: the browser workspace over a ReviewSession (lcmsquant.review).

A Starlette application served by uvicorn on 127.0.0.1 only. Every request must carry the
session's token (`?token=` or the X-Review-Token header) and name this machine as its Host, so
that neither another user of the machine nor a web page in the same browser can drive it. The
page, its script and plotly.js are served from the installed packages: nothing is fetched from
a network. The views here turn the session's tables into JSON; the page draws them.
"""

from __future__ import annotations

import hmac
import math
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lcmsquant.audit_trail import signatures
from lcmsquant.files import InputError
from lcmsquant.measure import AUDITED, PEAK_FIELDS
from lcmsquant.review import Correction, ReviewConflict, ReviewSession
from lcmsquant.vocabulary import PEAK_REVIEW_FLAGS, Flag, Meaning, PeakStatus, SampleType

TOKEN_HEADER = "X-Review-Token"
STATIC = resources.files("lcmsquant") / "review_static"
TRAIL_SHOWN = 500  # the newest entries the page lists (the report and audit-trail.jsonl hold all)


def plotly_js() -> Path:
    """plotly.min.js as the plotly package ships it (so the page works offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


# ---------------------------------------------------------------------------------------------
# Views: the session as JSON


def _clean(value):
    """A value JSON can carry: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is pd.NA or value is None:
        return None
    return value


def _records(table: pd.DataFrame, columns: list[str]) -> list[dict]:
    present = [c for c in columns if c in table.columns]
    return [{k: _clean(v) for k, v in row.items()} for row in table[present].to_dict("records")]


def _peak_flags(peak: Mapping) -> list[str]:
    """The flags of one integrated transition by itself (its analyte's flags come on top)."""
    flags: list[str] = []
    if peak["status"] == PeakStatus.NO_DATA:
        flags.append(Flag.NO_DATA)
    elif peak["status"] == PeakStatus.NO_PEAK:
        flags.append(Flag.NO_PEAK)
    for column, flag in (
        ("edge", Flag.EDGE),
        ("saturated", Flag.SATURATED),
        ("split", Flag.SPLIT),
        ("shoulder", Flag.SHOULDER),
    ):
        if bool(peak[column]):
            flags.append(flag)
    if peak["read_warnings"]:
        flags.append(Flag.READ_WARNING)
    if bool(peak["manual"]):
        flags.append(Flag.MANUAL)
    return flags


def correction_target(role: str, compound: str, transition: str) -> str:
    """The name a correction of this transition uses (overrides.csv's `target`): the analyte or
    internal standard for its quantifier or IS transition, the transition's name for a qualifier."""
    return transition if role == "qualifier" else compound


def grid_rows(session: ReviewSession) -> list[dict]:
    """One row per injection x transition: what was integrated and every flag that concerns it
    (a quantifier carries its analyte's flags, a qualifier the ion ratio, an IS its response)."""
    method = session.method
    results = session.result.results
    peaks = session.result.peaks
    by_key = {
        (int(r["injection"]), r["analyte"]): r
        for r in results[
            [
                "injection",
                "analyte",
                "flags",
                "area_ratio",
                "concentration",
                "accuracy_pct",
                "internal_standard",
                "calibrator_set",
            ]
        ].to_dict("records")
    }
    is_users = {
        i.name: [a.name for a in method.analytes if a.internal_standard == i.name] for i in method.internal_standards
    }
    injections = {inj.order: inj for inj in session.batch.injections}
    rows = []
    for peak in peaks.to_dict("records"):
        order = int(peak["injection"])
        inj = injections[order]
        role, compound = peak["role"], peak["compound"]
        flags: list[str] = _peak_flags(peak)
        extra: dict = {}
        if role == "internal_standard":
            analyte = compound
            for user in is_users.get(compound, []):
                own = str(by_key.get((order, user), {}).get("flags", "")).split(";")
                flags += [f for f in (Flag.IS_RESPONSE, Flag.NO_IS) if f in own]
        else:
            analyte = compound
            result = by_key.get((order, compound), {})
            own = [f for f in str(result.get("flags", "")).split(";") if f]
            extra = {"calibrator_set": _clean(result.get("calibrator_set"))}
            if role == "quantifier":
                flags += own
                extra |= {
                    "area_ratio": _clean(result.get("area_ratio")),
                    "concentration": _clean(result.get("concentration")),
                    "accuracy_pct": _clean(result.get("accuracy_pct")),
                }
            else:
                flags += [f for f in own if f == Flag.ION_RATIO]
        if peak["status"] == PeakStatus.OK and role != "quantifier" and _clean(peak["sn"]) is not None:
            if peak["sn"] < method.integration.min_sn and inj.sample_type != SampleType.BLANK:
                flags.append(Flag.LOW_SN)
        rows.append(
            {
                "id": f"{order}|{peak['transition']}",
                "injection": order,
                "file": session.file_of(inj),
                "sample_id": inj.sample_id,
                "sample_type": inj.sample_type,
                "level": inj.level,
                "analyte": analyte,
                "role": role,
                "transition": peak["transition"],
                "target": correction_target(role, compound, peak["transition"]),
                "status": peak["status"],
                "rt_min": _clean(peak["rt_min"]),
                "start_min": _clean(peak["start_min"]),
                "end_min": _clean(peak["end_min"]),
                "area": _clean(peak["area"]),
                "sn": _clean(peak["sn"]),
                "manual": bool(peak["manual"]),
                "flags": list(dict.fromkeys(str(f) for f in flags)),
                **extra,
            }
        )
    return rows


def calibration_views(session: ReviewSession) -> list[dict]:
    """Per analyte and calibrator set: the curve, its calibrators and their residuals."""
    results = session.result.results
    by_analyst = {(o.file, o.analyte) for o in session.batch.overrides if o.action == "exclude"}
    views = []
    for cal in session.result.calibration.to_dict("records"):
        rows = results[
            (results["analyte"] == cal["analyte"])
            & (results["calibrator_set"] == cal["calibrator_set"])
            & (results["sample_type"] == SampleType.CALIBRATOR)
        ]
        calibrators = _records(
            rows.rename(columns={"concentration_found": "found"}),
            [
                "injection",
                "file",
                "sample_id",
                "level",
                "nominal",
                "area_ratio",
                "found",
                "accuracy_pct",
                "excluded",
                "exclusion_reason",
                "flags",
            ],
        )
        for c in calibrators:  # only an analyst's exclusion can be taken back (include)
            c["excluded_by_analyst"] = (c["file"], cal["analyte"]) in by_analyst
        x = np.array([c["nominal"] for c in calibrators if c["nominal"]], dtype=float)
        curve: dict = {"x": [], "y": []}
        if len(x) and _clean(cal["slope"]) is not None:
            grid = np.geomspace(x.min(), x.max(), 60)
            q = cal["quadratic"] if _clean(cal["quadratic"]) is not None else 0.0
            curve = {"x": grid.tolist(), "y": (cal["intercept"] + cal["slope"] * grid + q * grid**2).tolist()}
        views.append({**{k: _clean(v) for k, v in cal.items()}, "calibrators": calibrators, "curve": curve})
    return views


def qc_rows(session: ReviewSession) -> list[dict]:
    """Every QC injection x analyte with its accuracy and verdict."""
    results = session.result.results
    qcs = results[results["sample_type"] == SampleType.QC].rename(columns={"concentration_found": "found"})
    return _records(
        qcs,
        [
            "injection",
            "file",
            "sample_id",
            "analyte",
            "calibrator_set",
            "level",
            "nominal",
            "found",
            "accuracy_pct",
            "qc_passed",
            "flags",
        ],
    )


def verdict_views(session: ReviewSession) -> list[dict]:
    """Per analyte and calibrator set: accepted or not, and the rules that failed."""
    rules = session.result.rules
    return [
        {
            "analyte": analyte,
            "calibrator_set": cal_set,
            "accepted": bool(v["accepted"]),
            "reasons": list(v["reasons"]),
            "failing": [
                {
                    "id": r.id,
                    "rule": r.rule,
                    "section": r.section,
                    "measured": r.measured,
                    "limit": r.limit,
                    "critical": r.critical,
                }
                for r in rules
                if r.analyte == analyte and r.calibrator_set == cal_set and not r.passed
            ],
        }
        for (analyte, cal_set), v in session.result.verdicts.items()
    ]


def state(session: ReviewSession, analyst: str = "") -> dict:
    """Everything the page shows but the traces: the grid, curves, QCs, verdicts, reanalysis
    list, signatures and trail, with the version the page compares to see others' changes."""
    with session.lock:
        current = session.results_sha256
        trail = session.trail
        return {
            "version": session.version,
            "batch": session.folder.name,
            "folder": str(session.folder),
            "results_sha256": current,
            "analyst": analyst,
            "reasons": list(session.method.review_reasons),
            "analytes": [a.name for a in session.method.analytes],
            "internal_standards": [i.name for i in session.method.internal_standards],
            "sample_types": [str(t) for t in SampleType],
            "flags": [{"flag": str(f), "meaning": f.meaning} for f in Flag],
            "peak_review_flags": [str(f) for f in PEAK_REVIEW_FLAGS],
            "meanings": [{"meaning": str(m), "statement": m.statement} for m in Meaning],
            "units": session.method.units,
            "rows": grid_rows(session),
            "calibration": calibration_views(session),
            "qcs": qc_rows(session),
            "verdicts": verdict_views(session),
            "reanalysis": _records(session.result.reanalysis, list(session.result.reanalysis.columns)),
            "signatures": [
                {
                    "name": s.name,
                    "meaning": str(s.meaning),
                    "at": s.at,
                    "results_sha256": s.results_sha256,
                    "current": s.current,
                }
                for s in signatures(trail, current)
            ],
            "trail": [e.listed() for e in trail.entries[-TRAIL_SHOWN:]],
            "trail_intact": trail.intact,
            "trail_problems": list(trail.problems),
            "undo": _step_text(session.undo_steps),
            "redo": _step_text(session.redo_steps),
        }


def _step_text(steps: list) -> str:
    """What undo or redo would take back, and whose change it was (tabs share one history)."""
    if not steps:
        return ""
    step = steps[-1]
    return f"{step.summary} (by {step.by})" if step.by else step.summary


# What the chromatogram view draws of a peak: its integration and what a manual one replaced.
PEAK_VIEW = ("status", *PEAK_FIELDS, "expected_rt_min", *(f"auto_{k}" for k in AUDITED))


def _peak_view(peak: Mapping) -> dict:
    return {k: _clean(peak.get(k)) for k in PEAK_VIEW} | {"manual": bool(peak.get("manual", False))}


def chromatogram(session: ReviewSession, injection: int, transition: str) -> dict:
    """The traces of one row and its companions (an analyte's quantifier, qualifiers and IS; an
    IS and the quantifiers anchored on it), each with its peak, and the same transition in the
    injections before and after for comparison."""
    method = session.method
    by_name = {t.name: t for t in method.transitions()}
    if transition not in by_name:
        raise KeyError(f"no transition '{transition}' in the method")
    chosen = by_name[transition]
    if chosen.role == "internal_standard":
        group = [chosen, *(a.quantifier for a in method.analytes if a.internal_standard == chosen.compound)]
    else:
        analyte = method.analyte(chosen.compound)
        group = [
            analyte.quantifier,
            *analyte.qualifiers,
            method.internal_standard(analyte.internal_standard).transition,
        ]
    peaks = session.result.peaks
    orders = [inj.order for inj in session.batch.injections]
    if injection not in orders:
        raise KeyError(f"no injection {injection} in the worklist")

    def panel(order: int, t) -> dict:
        trace = session.traces(order).get(t.name)
        row = peaks[(peaks["injection"] == order) & (peaks["transition"] == t.name)]
        return {
            "transition": t.name,
            "role": t.role,
            "target": correction_target(t.role, t.compound, t.name),
            "time": trace.time.tolist() if trace is not None else [],
            "intensity": trace.intensity.tolist() if trace is not None else [],
            "peak": _peak_view(row.iloc[0].to_dict()) if len(row) else {},
        }

    position = orders.index(injection)
    inj = session.injection(injection)
    analyte_name = chosen.compound if chosen.role != "internal_standard" else None
    neighbours = [
        {"injection": o, "sample_id": session.injection(o).sample_id, **panel(o, chosen)}
        for o in (
            orders[position - 1] if position > 0 else None,
            orders[position + 1] if position + 1 < len(orders) else None,
        )
        if o is not None
    ]
    return {
        "injection": injection,
        "file": session.file_of(inj),
        "sample_id": inj.sample_id,
        "sample_type": inj.sample_type,
        "transition": transition,
        "panels": [panel(injection, t) for t in group],
        "neighbours": neighbours,
        "ion_ratio": _ion_ratio(session, injection, analyte_name) if analyte_name else None,
    }


def _ion_ratio(session: ReviewSession, injection: int, analyte: str) -> dict | None:
    """The analyte's ion ratio in this injection (first qualifier / quantifier), the batch's
    reference (mean of the calibrators in the curve), the method's tolerance for a qualifier of
    that abundance, and whether it is flagged; None for an analyte without a qualifier."""
    method_analyte = session.method.analyte(analyte)
    if not method_analyte.qualifiers:
        return None
    results = session.result.results
    row = results[(results["injection"] == injection) & (results["analyte"] == analyte)]
    if not len(row) or "ion_ratio" not in row.columns:
        return None
    ratio = _clean(row["ion_ratio"].iloc[0])
    reference = _clean(row["ion_ratio_reference"].iloc[0])
    tolerance = session.method.identity.ion_ratio_tolerance_pct(reference) if reference else None
    deviation = 100.0 * (ratio / reference - 1.0) if ratio is not None and reference else None
    return {
        "qualifier": method_analyte.qualifiers[0].name,
        "ratio": ratio,
        "reference": reference,
        "tolerance_pct": tolerance,
        "deviation_pct": deviation,
        "flagged": Flag.ION_RATIO in str(row["flags"].iloc[0]).split(";"),
    }


# ---------------------------------------------------------------------------------------------
# The application


def _problem(err: Exception, status: int = 400) -> JSONResponse:
    problems = list(getattr(err, "problems", [])) or [str(err)]
    return JSONResponse({"error": problems[0], "problems": problems}, status_code=status)


def create_app(session: ReviewSession, token: str, analyst: str = "", allowed_hosts: tuple[str, ...] = ()) -> Starlette:
    """The application over one review session; requests without `token` are refused (403)."""

    async def index(request: Request) -> Response:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{TOKEN}}", token), headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(plotly_js(), media_type="text/javascript")
        files = {p.name: p for p in STATIC.iterdir() if p.name != "index.html"}
        if name not in files:
            return PlainTextResponse("not found", status_code=404)
        media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}.get(name.rsplit(".", 1)[-1])
        return Response(files[name].read_bytes(), media_type=media or "application/octet-stream")

    def get_state(request: Request) -> Response:
        return JSONResponse(state(session, analyst))

    def get_version(request: Request) -> Response:
        return JSONResponse({"version": session.version})

    def get_chromatogram(request: Request) -> Response:
        try:
            view = chromatogram(
                session, int(request.query_params.get("injection", "")), request.query_params.get("transition", "")
            )
        except (KeyError, ValueError) as err:
            return _problem(err, 404)
        return JSONResponse(view)

    def acted(action: Callable[[dict], object]) -> Callable:
        async def endpoint(request: Request) -> Response:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as err:
                return _problem(ValueError(f"the request is not JSON: {err}"))
            started = time.perf_counter()
            try:
                await _in_thread(action, body)
            except ReviewConflict as err:
                return _problem(err, 409)
            except (InputError, ValueError, KeyError, TypeError) as err:
                return _problem(err)
            acted_at = time.perf_counter()
            view = state(session, analyst)
            response = JSONResponse(view)
            done = time.perf_counter()
            # what the page's benchmark splits the server's time into (benchmarks/review_speed.py)
            response.headers["Server-Timing"] = (
                f"change;dur={1000 * (acted_at - started):.1f}, state;dur={1000 * (done - acted_at):.1f}"
            )
            return response

        return endpoint

    def change(body: dict) -> None:
        corrections = [
            Correction(
                file=str(c["file"]),
                target=str(c["target"]),
                action=str(c["action"]),
                start_min=_number(c.get("start_min")),
                end_min=_number(c.get("end_min")),
            )
            for c in body.get("corrections", [])
        ]
        session.apply(corrections, str(body.get("reason", "")), str(body.get("analyst", "")))

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/state", get_state),
        Route("/api/version", get_version),
        Route("/api/chromatogram", get_chromatogram),
        Route("/api/change", acted(change), methods=["POST"]),
        Route("/api/undo", acted(lambda b: session.undo(str(b.get("analyst", "")))), methods=["POST"]),
        Route("/api/redo", acted(lambda b: session.redo(str(b.get("analyst", "")))), methods=["POST"]),
        Route(
            "/api/sign",
            acted(lambda b: session.sign(str(b.get("name", "")), str(b.get("meaning", "")))),
            methods=["POST"],
        ),
        Route(
            "/api/report", acted(lambda b: session.write_report(str(b.get("analyst", "")) or None)), methods=["POST"]
        ),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token, hosts=frozenset(allowed_hosts))])


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
    ),
]


class Guard:
    """Refuses (403) a request without the review's token, or naming another Host than this
    machine's address (a web page that rebinds a name to 127.0.0.1); adds security headers."""

    def __init__(self, app, token: str, hosts: frozenset[str] = frozenset()) -> None:
        self.app, self.token, self.hosts = app, token, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            refusal = PlainTextResponse(
                "forbidden: open the address lcmsquant review printed (it holds the token)", 403
            )
            await refusal(scope, receive, send)
            return
        if self.hosts and request.headers.get("host", "") not in self.hosts:
            await PlainTextResponse("forbidden: this review answers only at 127.0.0.1", 403)(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


async def _in_thread(action: Callable[[dict], object], body: dict) -> None:
    """Run a change in a worker thread: it measures and writes files, which blocks."""
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(action, body)


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def new_token() -> str:
    """An unguessable token for the review's address."""
    return secrets.token_urlsafe(24)


def bind(port: int = 0) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: a free one the system picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        raise OSError(
            err.errno, f"cannot listen on 127.0.0.1:{port} ({err.strerror}); choose another --port or leave it out"
        ) from None
    sock.listen(64)
    return sock


def serve(
    session: ReviewSession,
    sock: socket.socket,
    token: str,
    analyst: str = "",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the review on `sock` until interrupted (Ctrl-C)."""
    import uvicorn

    port = sock.getsockname()[1]
    hosts = (f"127.0.0.1:{port}", f"localhost:{port}")
    app = create_app(session, token, analyst, hosts)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(f"http://127.0.0.1:{port}/?token={token}")
    server.run(sockets=[sock])


@contextmanager
def running(session: ReviewSession, token: str, analyst: str = "", port: int = 0) -> Iterator[str]:
    """Serve the review in a background thread for as long as the block runs; yields its address
    (with the token). For tests, benchmarks and screenshots: `lcmsquant review` uses `serve`."""
    import uvicorn

    sock = bind(port)
    bound = sock.getsockname()[1]
    hosts = (f"127.0.0.1:{bound}", f"localhost:{bound}")
    config = uvicorn.Config(
        create_app(session, token, analyst, hosts), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lcmsquant-review", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{bound}/?token={token}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
