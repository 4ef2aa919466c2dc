"""A mitmproxy addon that injects S3 faults on UploadPart requests for part 2,
or on writes of a backup's manifest.

FAULT_MODE: slowdown-once (503 SlowDown, once per upload), cut-once (drop the
connection, once per upload), always-500 (500 InternalError every time),
corrupt-once (flip one byte of the part's body on its way, once per upload),
manifest-unavailable (503 SlowDown to the first MANIFEST_FAULTS PUTs of a
manifest.json, default 6: more than one call's retries), corrupt-read (flip one
byte of every snapshot object read back, as a store that rotted would),
slow-reads (hold every read of a snapshot object HOLD_SECONDS, default 60, so
a task that reads is certainly mid-flight).
Each injected fault appends a line to the file named by FAULT_LOG.
"""

import asyncio
import os

from mitmproxy import http

MODE = os.environ.get("FAULT_MODE", "slowdown-once")
LOG = os.environ["FAULT_LOG"]
seen = set()


def _error(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )


async def request(flow: http.HTTPFlow) -> None:
    if MODE == "slow-reads":
        if flow.request.method == "GET" and flow.request.path.split("?")[0].endswith(".snapshot"):
            with open(LOG, "a") as f:
                f.write(f"{MODE} {flow.request.path}\n")
            await asyncio.sleep(float(os.environ.get("HOLD_SECONDS", "60")))
        return
    if MODE == "corrupt-read":
        return
    if MODE == "manifest-unavailable":
        path = flow.request.path.split("?")[0]
        if flow.request.method == "PUT" and path.endswith("/manifest.json"):
            if len(seen) < int(os.environ.get("MANIFEST_FAULTS", "6")):
                seen.add(len(seen))
                with open(LOG, "a") as f:
                    f.write(f"{MODE} {path}\n")
                flow.response = http.Response.make(503, _error("SlowDown", "Please reduce your request rate."), {"Content-Type": "application/xml"})
        return
    q = flow.request.query
    if flow.request.method != "PUT" or q.get("partNumber") != "2" or "uploadId" not in q:
        return
    key = q["uploadId"]
    if MODE != "always-500" and key in seen:
        return
    seen.add(key)
    with open(LOG, "a") as f:
        f.write(f"{MODE} {flow.request.path}\n")
    if MODE == "cut-once":
        flow.kill()
    elif MODE == "corrupt-once":
        body = bytearray(flow.request.raw_content or b"")
        if body:
            body[len(body) // 2] ^= 0xFF
        flow.request.raw_content = bytes(body)
    elif MODE == "slowdown-once":
        flow.response = http.Response.make(503, _error("SlowDown", "Please reduce your request rate."), {"Content-Type": "application/xml"})
    else:
        flow.response = http.Response.make(500, _error("InternalError", "We encountered an internal error."), {"Content-Type": "application/xml"})


def response(flow: http.HTTPFlow) -> None:
    if MODE != "corrupt-read" or flow.request.method != "GET" or flow.response is None:
        return
    if not flow.request.path.split("?")[0].endswith(".snapshot"):
        return
    body = bytearray(flow.response.raw_content or b"")
    if body:
        body[len(body) // 2] ^= 0xFF
        flow.response.raw_content = bytes(body)
        with open(LOG, "a") as f:
            f.write(f"{MODE} {flow.request.path}\n")
