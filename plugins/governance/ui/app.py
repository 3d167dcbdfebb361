"""The Privacy requests app (FastAPI), mounted by Airflow's API server at ``/privacy-requests``.

Every route depends on Airflow's ``get_user`` (the UI's own JWT cookie or a bearer token): without
a valid session the answer is 401/403 before any handler runs. What a user may do is checked per
action (:mod:`governance.ui.access`). Identities only ever arrive in POST bodies (never in a URL,
so never in the API server's access log); paths carry request ids.

HTML pages for staff, and the same operations as JSON under ``/api`` (for scripts and tests).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from governance.ui import pages, service
from governance.ui.access import Action, Staff, may, staff_of
from governance.ui.mount import MOUNT
from governance.ui.service import DAG_FOR_KIND, PageError

NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "same-origin"}


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_cross_site(request: Request) -> None:
    """A state-changing request signed in by the UI's cookie must come from this site's own pages.

    Browsers send the session cookie with a form posted from anywhere the cookie's SameSite rule
    allows (a sibling subdomain, an older browser), so a page elsewhere could approve, extend or
    reveal in a signed-in officer's name. Modern browsers say where a request comes from
    (``Sec-Fetch-Site``, ``Origin``): anything but this origin is refused before any handler
    runs. A bearer token is never sent by a browser on its own, so API clients are not checked.
    """
    if request.method in _SAFE_METHODS or request.headers.get("authorization"):
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"Refused: a {site} request may not change anything here; use the Privacy requests page itself.")
    origin = request.headers.get("origin")
    if origin is not None:
        hosts = {h for h in (request.headers.get("host"), request.headers.get("x-forwarded-host")) if h}
        if origin == "null" or urlsplit(origin).netloc not in hosts:
            raise HTTPException(403, "Refused: this form was posted from another site; use the Privacy requests page itself.")


async def current_staff(request: Request) -> Staff:
    """The authenticated user (Airflow's own check; 401 without a session, 403 for a bad token),
    after :func:`refuse_cross_site`."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    refuse_cross_site(request)
    credentials = await bearer_scheme(request)
    user = await get_user(request, None, credentials)
    return staff_of(user)


StaffDep = Annotated[Staff, Depends(current_staff)]


def _require(staff: Staff, action: Action, dag_id: str | None = None) -> None:
    if not may(staff, action, dag_id):
        raise HTTPException(403, f"Your role may not {action} here (configured in [governance] {action}_roles).")


def _base(request: Request) -> str:
    return str(request.scope.get("root_path") or MOUNT).rstrip("/")


def _airflow_base(request: Request) -> str:
    base = _base(request)
    return base[: -len(MOUNT)] if base.endswith(MOUNT) else ""


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _permissions(staff: Staff, kind: str) -> dict[str, bool]:
    dag_id = DAG_FOR_KIND.get(kind)
    actions: tuple[Action, ...] = ("record", "approve", "reveal")
    allowed: dict[str, bool] = {action: may(staff, action, dag_id) for action in actions}
    allowed["extend"] = may(staff, "approve")
    allowed["respond"] = may(staff, "record")
    return allowed


def _plans(view: service.RequestView) -> dict[str, Any]:
    dry = view.latest_plan(dry_run=True)
    current = view.latest_plan(dry_run=False)
    out: dict[str, Any] = {"dry_run": service.plan_lines(dry["summary"]) if dry else None,
                           "current": service.plan_lines(current["summary"]) if current else None}  # fmt: skip
    if dry and current:
        out["changes"] = service.plan_changes(dry["summary"], current["summary"]) or [
            "Nothing: the plan put up for approval has the same effect as the dry run "
            "(each run computes its own plan, from the data at that moment)."
        ]
    return out


DONE = ("extended", "retried", "responded")


def _done_message(view: service.RequestView, done: str) -> str | None:
    """The line shown after a lifecycle step (the page is reloaded by a redirect, so it is
    read back from the request, not carried in the URL)."""
    r = view.request
    if done == "extended" and r["extended_at"]:
        return (f"Deadline extended by {r['extended_by']}: now due {r['due_at']:%Y-%m-%d %H:%M} UTC "
                f"(was {r['original_due_at']:%Y-%m-%d %H:%M} UTC).")  # fmt: skip
    if done == "retried" and r["dispatch_run_id"]:
        return f"Dispatched again as run {r['dispatch_run_id']} (attempt {r['dispatch_attempt']})."
    if done == "retried":
        return f"Cleared for retry (attempt {r['dispatch_attempt']}): the next intake pass dispatches it."
    if done == "responded" and r["responded_at"]:
        return f"Recorded: the person was told on {r['responded_at']:%Y-%m-%d %H:%M} UTC by {r['responded_via']}."
    return None


def _request_html(request: Request, staff: Staff, request_id: str, *, error: str | None = None, status: int = 200,
                  done: str = "") -> HTMLResponse:  # fmt: skip
    view = service.request_view(request_id)
    methods: dict[str, str] | None = None
    export_options: list[str] | None = None
    waiting = view.waiting(service.APPROVAL_TASK)
    if waiting is not None:
        _options, methods = service.hitl_choices(waiting.dag_id, waiting.run_id, service.APPROVAL_TASK)
    verifying = view.waiting(service.EXPORT_VERIFICATION_TASK)
    if verifying is not None:
        export_options, _m = service.hitl_choices(verifying.dag_id, verifying.run_id, service.EXPORT_VERIFICATION_TASK)
    html = pages.request_page(view, base=_base(request), airflow_base=_airflow_base(request), staff=staff,
                              permissions=_permissions(staff, view.request["kind"]), plans=_plans(view), methods=methods,
                              export_options=export_options, error=error,
                              flash=_done_message(view, done) if done in DONE and error is None else None)  # fmt: skip
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


def create_app() -> FastAPI:
    app = FastAPI(title="Privacy requests", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        if request.url.path.startswith(_base(request) + "/api/") or "/api/" in request.url.path:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return HTMLResponse(pages.layout("Privacy requests", pages.message(str(exc), error=True), base=_base(request)),
                            status_code=exc.status)  # fmt: skip

    # -- HTML -----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, staff: StaffDep, kind: str = "", status: str = "",
              sort: str = "deadline", desc: str = "0") -> HTMLResponse:  # fmt: skip
        _require(staff, "view")
        kind_f = kind if kind in DAG_FOR_KIND else None
        status_f = status if status in service.STATUSES else None
        sort_f = sort if sort in service.SORTS else "deadline"
        rows = service.list_requests(kind=kind_f, status=status_f, sort=sort_f, descending=desc == "1")
        body = pages.requests_list(rows, base=_base(request), kind=kind_f, status=status_f, sort=sort_f,
                                   descending=desc == "1", can_record=may(staff, "record"))  # fmt: skip
        return HTMLResponse(pages.layout("Privacy requests", body, base=_base(request), staff=staff), headers=NO_STORE)

    @app.post("/requests")
    async def record(request: Request, staff: StaffDep) -> Response:
        form = await _form(request)
        kind = form.get("kind", "")
        _require(staff, "record", DAG_FOR_KIND.get(kind))
        try:
            request_id = service.record_request(kind=kind, email=form.get("email"), phone=form.get("phone"),
                                                business_id=form.get("business_id"), staff=staff)  # fmt: skip
        except PageError as exc:
            body = pages.message(str(exc), error=True) + pages.record_form(_base(request))
            return HTMLResponse(pages.layout("Privacy requests", body, base=_base(request), staff=staff), status_code=exc.status)
        service.start_run(request_id, staff=staff, dry_run=True)
        return RedirectResponse(f"{_base(request)}/requests/{request_id}", status_code=303)

    @app.get("/requests/{request_id}", response_class=HTMLResponse)
    def show(request: Request, request_id: str, staff: StaffDep, done: str = "") -> HTMLResponse:
        _require(staff, "view")
        return _request_html(request, staff, request_id, done=done)

    # Lifecycle steps: the same functions as `python -m governance request extend|retry|respond`,
    # with the authenticated user as the actor; a refused step is shown on the request's page.

    @app.post("/requests/{request_id}/extend")
    async def extend(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        _require(staff, "approve")
        try:
            service.extend_request(request_id, days=form.get("days", ""), reason=form.get("reason", ""), staff=staff)
        except PageError as exc:
            return _request_html(request, staff, request_id, error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{request_id}?done=extended", status_code=303)

    @app.post("/requests/{request_id}/retry")
    async def retry(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        row = service.request_row(request_id)
        _require(staff, "record", DAG_FOR_KIND[row["kind"]])
        try:
            service.retry_failed(row["request_id"], reason=form.get("reason", ""), staff=staff)
        except PageError as exc:
            return _request_html(request, staff, row["request_id"], error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{row['request_id']}?done=retried", status_code=303)

    @app.post("/requests/{request_id}/respond")
    async def respond(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        _require(staff, "record")
        try:
            service.record_told(request_id, via=form.get("via", ""), when=form.get("when"), staff=staff)
        except PageError as exc:
            return _request_html(request, staff, request_id, error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{request_id}?done=responded", status_code=303)

    @app.post("/requests/{request_id}/runs")
    async def start(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        row = service.request_row(request_id)
        _require(staff, "record", DAG_FOR_KIND[row["kind"]])
        try:
            service.start_run(row["request_id"], staff=staff, dry_run=form.get("dry_run", "true") != "false")
        except PageError as exc:
            return _request_html(request, staff, row["request_id"], error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{row['request_id']}", status_code=303)

    @app.post("/requests/{request_id}/approve")
    async def approve(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        _require(staff, "approve", "dsr_erasure")
        try:
            service.approve_erasure(request_id, verification_method=form.get("verification_method", ""), staff=staff)
        except PageError as exc:
            return _request_html(request, staff, request_id, error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{request_id}", status_code=303)

    @app.post("/requests/{request_id}/verify")
    async def verify(request: Request, request_id: str, staff: StaffDep) -> Response:
        form = await _form(request)
        _require(staff, "approve", "dsr_export")
        try:
            service.verify_export(request_id, option=form.get("option", ""), staff=staff)
        except PageError as exc:
            return _request_html(request, staff, request_id, error=str(exc), status=exc.status)
        return RedirectResponse(f"{_base(request)}/requests/{request_id}", status_code=303)

    @app.post("/requests/{request_id}/passphrase", response_class=HTMLResponse)
    def passphrase(request: Request, request_id: str, staff: StaffDep) -> HTMLResponse:
        _require(staff, "reveal")
        secret = service.reveal_passphrase(request_id, staff=staff)
        html = pages.secret_page("Passphrase of the export", label="Give this passphrase to the person by phone or SMS:",
                                 secret=secret, note="Not in the e-mail with the download link. This reveal was recorded.",
                                 base=_base(request), request_id=request_id, staff=staff, element_id="passphrase")  # fmt: skip
        return HTMLResponse(html, headers=NO_STORE)

    @app.post("/requests/{request_id}/link", response_class=HTMLResponse)
    def link(request: Request, request_id: str, staff: StaffDep) -> HTMLResponse:
        _require(staff, "reveal")
        url, expires = service.download_link(request_id, staff=staff)
        note = f"Valid until {expires:%Y-%m-%d %H:%M UTC}." if expires else "Valid for a limited time."
        html = pages.secret_page("Download link of the export", label="Send this link to the person by e-mail:",
                                 secret=url, note=note + " `python -m governance export-link` issues a new one.",
                                 base=_base(request), request_id=request_id, staff=staff, element_id="download-link")  # fmt: skip
        return HTMLResponse(html, headers=NO_STORE)

    @app.get("/requests/{request_id}/certificate", response_class=HTMLResponse)
    def certificate(request_id: str, staff: StaffDep) -> HTMLResponse:
        _require(staff, "view")
        return HTMLResponse(service.certificate_html(request_id, staff=staff), headers=NO_STORE)

    # -- JSON -----------------------------------------------------------------------------------

    @app.get("/api/requests")
    def api_list(staff: StaffDep, kind: str = "", status: str = "", sort: str = "deadline",
                 desc: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        _require(staff, "view")
        rows = service.list_requests(kind=kind or None, status=status or None, sort=sort, descending=desc)
        return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in rows]

    @app.post("/api/requests")
    async def api_record(request: Request, staff: StaffDep) -> dict[str, Any]:
        body = await request.json()
        kind = str(body.get("kind") or "")
        _require(staff, "record", DAG_FOR_KIND.get(kind))
        request_id = service.record_request(kind=kind, email=body.get("email"), phone=body.get("phone"),
                                            business_id=body.get("business_id"), staff=staff)  # fmt: skip
        run_id = service.start_run(request_id, staff=staff, dry_run=True) if body.get("start", True) else None
        return {"request_id": request_id, "run_id": run_id}

    @app.get("/api/requests/{request_id}")
    def api_show(request_id: str, staff: StaffDep) -> dict[str, Any]:
        _require(staff, "view")
        view = service.request_view(request_id)
        return {
            "request": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in view.request.items()},
            "runs": [{"dag_id": r.dag_id, "run_id": r.run_id, "state": r.state, "dry_run": r.dry_run,
                      "waiting_for": r.waiting_for} for r in view.runs],  # fmt: skip
            "plans": _plans(view),
            "actions": [{"action": a["action"], "actor": a["actor"], "at": a["at"].isoformat()} for a in view.actions],
            "certificate": bool(view.certificate),
        }

    @app.post("/api/requests/{request_id}/runs")
    async def api_start(request: Request, request_id: str, staff: StaffDep) -> dict[str, Any]:
        body = await request.json() if await request.body() else {}
        row = service.request_row(request_id)
        _require(staff, "record", DAG_FOR_KIND[row["kind"]])
        return {"run_id": service.start_run(row["request_id"], staff=staff, dry_run=body.get("dry_run"))}

    @app.post("/api/requests/{request_id}/approve")
    async def api_approve(request: Request, request_id: str, staff: StaffDep) -> dict[str, Any]:
        body = await request.json()
        _require(staff, "approve", "dsr_erasure")
        run_id = service.approve_erasure(request_id, verification_method=str(body.get("verification_method") or ""), staff=staff)
        return {"approved": True, "run_id": run_id}

    @app.post("/api/requests/{request_id}/extend")
    async def api_extend(request: Request, request_id: str, staff: StaffDep) -> dict[str, Any]:
        body = await request.json()
        _require(staff, "approve")
        due = service.extend_request(request_id, days=body.get("days", ""), reason=str(body.get("reason") or ""), staff=staff)
        return {"request_id": request_id, "due_at": due.isoformat()}

    @app.post("/api/requests/{request_id}/retry")
    async def api_retry(request: Request, request_id: str, staff: StaffDep) -> dict[str, Any]:
        body = await request.json()
        row = service.request_row(request_id)
        _require(staff, "record", DAG_FOR_KIND[row["kind"]])
        return {"request_id": row["request_id"],
                "run_id": service.retry_failed(row["request_id"], reason=str(body.get("reason") or ""), staff=staff)}  # fmt: skip

    @app.post("/api/requests/{request_id}/respond")
    async def api_respond(request: Request, request_id: str, staff: StaffDep) -> dict[str, Any]:
        body = await request.json()
        _require(staff, "record")
        at = service.record_told(request_id, via=str(body.get("via") or ""), when=body.get("when"), staff=staff)
        return {"request_id": request_id, "responded_at": at.isoformat()}

    @app.post("/api/requests/{request_id}/passphrase")
    def api_passphrase(request_id: str, staff: StaffDep) -> JSONResponse:
        _require(staff, "reveal")
        return JSONResponse({"passphrase": service.reveal_passphrase(request_id, staff=staff)}, headers=NO_STORE)

    return app
