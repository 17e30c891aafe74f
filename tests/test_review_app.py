"""`lcmsquant review`'s web application without a browser: Starlette's TestClient on the app over
a review of a small simulated batch (the guard, the JSON views, a change and its undo, errors)."""

from __future__ import annotations

import csv
import warnings

import pytest

from lcmsquant.review import open_review
from lcmsquant.review_app import TOKEN_HEADER, create_app
from lcmsquant.simulate import simulate_batch

with warnings.catch_warnings():  # Starlette suggests httpx2; httpx is what the test extra installs
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "t0ken-for-tests"
HOST = "127.0.0.1:8765"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review-app") / "batch"
    simulate_batch(folder, seed=7)
    with open_review(folder, jobs=1, analyst="A. Chemist") as review:
        yield review


@pytest.fixture(scope="module")
def client(session):
    app = create_app(session, TOKEN, "A. Chemist", allowed_hosts=(HOST,))
    with TestClient(app, base_url=f"http://{HOST}") as test_client:
        yield test_client


def _get(client, path, **params):
    return client.get(path, params={"token": TOKEN, **params})


def _post(client, path, body):
    return client.post(path, json=body, headers={TOKEN_HEADER: TOKEN})


def test_requests_without_the_token_are_refused(client):
    for path in ("/", "/api/state", "/api/version", "/static/review.js", "/static/plotly.min.js"):
        assert client.get(path).status_code == 403, path
        assert client.get(path, params={"token": "wrong"}).status_code == 403, path
    assert client.post("/api/change", json={"corrections": []}).status_code == 403
    assert client.post("/api/undo", json={}, headers={TOKEN_HEADER: TOKEN[:-1]}).status_code == 403


def test_the_token_is_accepted_in_the_query_or_the_header(client):
    assert _get(client, "/api/version").status_code == 200
    assert client.get("/api/version", headers={TOKEN_HEADER: TOKEN}).status_code == 200


def test_another_host_is_refused(session):
    app = create_app(session, TOKEN, allowed_hosts=(HOST,))
    with TestClient(app, base_url="http://attacker.example:8765") as other:
        response = other.get("/api/version", params={"token": TOKEN})
    assert response.status_code == 403
    assert "127.0.0.1" in response.text


def test_the_page_carries_the_token_and_no_inline_script(client):
    response = _get(client, "/")
    assert response.status_code == 200
    html = response.text
    assert f'<meta name="review-token" content="{TOKEN}">' in html
    assert "{{TOKEN}}" not in html
    # CSP allows scripts from the review only: every <script> names its file
    assert html.count("<script") == html.count("<script src=")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    for name, kind in (("review.js", "javascript"), ("review.css", "css"), ("plotly.min.js", "javascript")):
        static = _get(client, f"/static/{name}")
        assert static.status_code == 200 and kind in static.headers["content-type"], name
    assert _get(client, "/static/index.html").status_code == 404
    assert _get(client, "/static/nothing.js").status_code == 404


def test_state_has_every_injection_by_transition_and_the_tables(client, session):
    state = _get(client, "/api/state").json()
    for key in ("version", "rows", "calibration", "qcs", "verdicts", "reanalysis", "signatures", "trail", "reasons"):
        assert key in state, key
    n_transitions = len(list(session.method.transitions()))
    assert len(state["rows"]) == len(session.batch.injections) * n_transitions
    known = {f["flag"] for f in state["flags"]}
    for row in state["rows"]:
        assert {"id", "injection", "file", "sample_id", "role", "transition", "target", "area", "flags"} <= set(row)
        assert set(row["flags"]) <= known
    assert {(c["analyte"]) for c in state["calibration"]} == {a.name for a in session.method.analytes}
    assert all(c["calibrators"] and len(c["curve"]["x"]) == len(c["curve"]["y"]) for c in state["calibration"])
    assert state["trail_intact"] is True
    assert state["analyst"] == "A. Chemist"
    assert _get(client, "/api/version").json() == {"version": state["version"]}


def test_chromatogram_of_a_row_and_404_for_unknown_ones(client):
    view = _get(client, "/api/chromatogram", injection=5, transition="flumatinib quantifier").json()
    roles = [p["role"] for p in view["panels"]]
    assert roles[0] == "quantifier" and "internal_standard" in roles
    quant = view["panels"][0]
    assert len(quant["time"]) == len(quant["intensity"]) > 10
    for key in ("start", "end", "rt", "baseline_start", "baseline_end", "expected_rt", "auto_start"):
        assert any(k.startswith(key) for k in quant["peak"]), key
    assert [n["injection"] for n in view["neighbours"]] == [4, 6]
    missing = _get(client, "/api/chromatogram", injection=5, transition="no such transition")
    assert missing.status_code == 404 and "no such transition" in missing.json()["error"]
    assert _get(client, "/api/chromatogram", injection=9999, transition="flumatinib quantifier").status_code == 404
    assert _get(client, "/api/chromatogram", injection="x", transition="flumatinib quantifier").status_code == 404


def test_the_ion_ratio_comes_with_its_reference_and_tolerance(client, session):
    """An ION_RATIO row says nothing by itself: the chromatogram view carries the ratio, the
    calibrators' reference and the method's tolerance for a qualifier of that abundance."""
    results = session.result.results
    flagged = results[results["flags"].str.contains("ION_RATIO", regex=False)].iloc[0]
    view = _get(
        client, "/api/chromatogram", injection=int(flagged["injection"]), transition=f"{flagged['analyte']} qualifier"
    ).json()
    ratio = view["ion_ratio"]
    assert ratio["qualifier"] == f"{flagged['analyte']} qualifier" and ratio["flagged"] is True
    assert ratio["ratio"] == pytest.approx(flagged["ion_ratio"])
    assert ratio["reference"] == pytest.approx(flagged["ion_ratio_reference"])
    tolerance = session.method.identity.ion_ratio_tolerance_pct(flagged["ion_ratio_reference"])
    assert ratio["tolerance_pct"] == tolerance
    assert abs(ratio["deviation_pct"]) > tolerance  # why it is flagged
    quiet = _get(client, "/api/chromatogram", injection=5, transition="flumatinib quantifier").json()["ion_ratio"]
    assert quiet["flagged"] is False and abs(quiet["deviation_pct"]) <= quiet["tolerance_pct"]
    is_view = _get(client, "/api/chromatogram", injection=5, transition="flumatinib-d3 internal standard").json()
    assert is_view["ion_ratio"] is None  # an internal standard has none
    state = _get(client, "/api/state").json()
    assert _row(state, "5|flumatinib quantifier")["calibrator_set"] == "plasma"  # the Curve tab follows it


def _row(state, row_id):
    return next(r for r in state["rows"] if r["id"] == row_id)


def test_a_change_and_its_undo_through_the_api(client, session):
    before = _get(client, "/api/state").json()
    row = _row(before, "6|flumatinib quantifier")
    narrower = {"start_min": row["start_min"], "end_min": round(row["rt_min"] + 0.03, 4)}
    body = {
        "corrections": [{"file": row["file"], "target": row["target"], "action": "integrate", **narrower}],
        "reason": "Baseline drawn incorrectly",
        "analyst": "A. Chemist",
    }
    response = _post(client, "/api/change", body)
    assert response.status_code == 200, response.text
    assert "change;dur=" in response.headers["server-timing"]
    changed = response.json()
    assert changed["version"] > before["version"]
    assert _row(changed, row["id"])["manual"] and _row(changed, row["id"])["area"] < row["area"]
    assert "integrated flumatinib" in changed["undo"]
    with open(session.folder / "overrides.csv", newline="") as handle:
        [written] = list(csv.DictReader(handle))
    assert written["analyst"] == "A. Chemist" and written["reason"] == "Baseline drawn incorrectly"
    assert written["changed_at_utc"].endswith("Z")

    undone = _post(client, "/api/undo", {"analyst": "A. Chemist"}).json()
    assert _row(undone, row["id"])["area"] == row["area"] and not _row(undone, row["id"])["manual"]
    assert undone["undo"] == "" and undone["redo"]
    redone = _post(client, "/api/redo", {"analyst": "A. Chemist"}).json()
    assert _row(redone, row["id"])["area"] == _row(changed, row["id"])["area"]
    _post(client, "/api/undo", {"analyst": "A. Chemist"})
    assert [e["event"] for e in _get(client, "/api/state").json()["trail"][-3:]] == ["undo", "redo", "undo"]


def test_a_calibrator_excluded_and_included_again(client):
    def cal4(state):
        curve = next(c for c in state["calibration"] if c["analyte"] == "M3")
        return next(c for c in curve["calibrators"] if c["file"] == "006_CAL4.mzML"), curve

    body = {
        "corrections": [{"file": "006_CAL4.mzML", "target": "M3", "action": "exclude"}],
        "reason": "Calibrator excluded: assignable cause",
        "analyst": "A. Chemist",
    }
    excluded = _post(client, "/api/change", body)
    assert excluded.status_code == 200, excluded.text
    calibrator, curve = cal4(excluded.json())
    assert calibrator["excluded"] and calibrator["excluded_by_analyst"] and calibrator["exclusion_reason"]
    assert curve["n_used"] == curve["n_calibrators"] - 1
    body["corrections"][0]["action"] = "include"
    included = _post(client, "/api/change", body).json()
    calibrator, curve = cal4(included)
    assert not calibrator["excluded"] and not calibrator["excluded_by_analyst"]
    assert curve["n_used"] == curve["n_calibrators"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"corrections": [{"file": "006_CAL4.mzML", "target": "flumatinib", "action": "no_peak"}]}, "reason"),
        (
            {
                "corrections": [{"file": "nowhere.mzML", "target": "flumatinib", "action": "no_peak"}],
                "reason": "No peak present",
                "analyst": "A. Chemist",
            },
            "not in the worklist",
        ),
        (
            {
                "corrections": [
                    {"file": "006_CAL4.mzML", "target": "flumatinib", "action": "integrate", "start_min": 3}
                ],
                "reason": "x",
                "analyst": "A. Chemist",
            },
            "start before the end",
        ),
        ({"corrections": [], "reason": "x", "analyst": "A. Chemist"}, "nothing to change"),
        ({"corrections": [{"file": "006_CAL4.mzML"}], "reason": "x", "analyst": "A. Chemist"}, "target"),
    ],
)
def test_a_bad_change_is_a_json_400_with_its_problems(client, body, says):
    response = _post(client, "/api/change", body)
    assert response.status_code == 400
    answer = response.json()
    assert says in answer["error"] and answer["problems"] and answer["error"] == answer["problems"][0]


def test_other_errors_are_json_too(client):
    not_json = client.post("/api/change", content=b"{not json", headers={TOKEN_HEADER: TOKEN})
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    assert _post(client, "/api/change", ["a list"]).status_code == 400
    while _post(client, "/api/undo", {"analyst": "A. Chemist"}).status_code == 200:
        pass  # whatever the tests before left to undo
    nothing = _post(client, "/api/undo", {"analyst": "A. Chemist"})
    assert nothing.status_code == 400 and nothing.json()["error"] == "nothing to undo"
    nameless = _post(client, "/api/undo", {"analyst": ""})
    assert nameless.status_code == 400 and "name" in nameless.json()["error"]
    approval_first = _post(client, "/api/sign", {"name": "B. Approver", "meaning": "approved"})
    assert approval_first.status_code == 400 and approval_first.json()["problems"]
