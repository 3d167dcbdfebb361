"""
### dsr_export: a copy of a person's data (privacy policy 5.1, access and portability)

Privacy staff trigger this DAG from its form (or the intake workflow does, with a request id).
It gathers everything the data map says we hold about the person, in every database, the object
store and every processor, into **one encrypted ZIP**, checks it, and records a download link
on the request.

**Form.** Either an existing *request id*, or the person's *e-mail* and/or *phone* (a request is
then recorded for them, so the export is tracked to its 30-day deadline like any other). A
*business client id* limits the export to what was collected for that business (a business
asking on behalf of its caller). *Formats* chooses JSON, CSV and/or HTML for the table data;
`index.html` (a plain-words summary) and `manifest.json` (checksums) are always included.

**Steps.**
1. `open_request` checks the form before anything is read and loads or records the request.
2. An **unverified** request waits at `verify_identity` (Airflow UI, *Required actions*) until
   a privacy officer says how the person's identity was verified, or rejects the request
   (GDPR Art. 12(6)). Never paste an identity into the answer. `record_verification` stores it.
3. `build_bundle` resolves the person through the data map in one database snapshot and
   streams the rows, recordings, transcripts and processor records into the ZIP, encrypted with
   age (passphrase) on its way to the exports prefix (server-side encrypted, staging key).
   Rows of someone who shares an identity with the person (a household phone) are left out.
   When the identities given fit more than one person equally well (two callers of one business
   sharing a phone, no e-mail to tell them apart), nothing is collected: the request is
   rejected, with a message saying to record a new request with the identity that tells them
   apart.
4. `check_bundle` (Great Expectations) reads the bundle back: row counts equal the source
   counts of the same snapshot, every row and file belongs to the person, checksums match.
   If it fails, the run fails and no link is issued.
5. `publish_bundle` moves the checked bundle to the request's folder.
6. `close_request` always runs: it removes staging objects and sets the request's outcome, and
   `request_outcome` (the last task) fails the run when the request was not served.
   On success the download link (valid 7 days by default) is stored in
   `governance.privacy_requests.result_uri`, and nowhere else.

**The passphrase** is per request: `python -m governance export-passphrase REQUEST_ID` shows it
to privacy staff, who give it to the person by phone or SMS, separately from the e-mail with
the link. The person opens the bundle with `age -d` (or `rage -d`) and the passphrase.
"""

from __future__ import annotations

from airflow.sdk import dag

from governance.airflow import (
    close_export,
    export_bundle,
    export_params,
    open_request,
    request_dag_args,
    request_outcome,
    verify_identity,
)


@dag(
    dag_id="dsr_export",
    description="Give one person a copy of their data: an encrypted bundle from every system, checked, with a link",
    schedule=None,
    # Runs only when a request starts it: paused, the requests it is given would wait, queued.
    is_paused_upon_creation=False,
    max_active_runs=4,
    params=export_params(),
    doc_md=__doc__,
    **request_dag_args(tags=["export"]),
)
def dsr_export() -> None:
    handle = open_request("export")
    published = export_bundle(handle, verify_identity(handle))
    close_export(handle, published)
    request_outcome()


dsr_export()
