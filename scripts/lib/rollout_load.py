#!/usr/bin/env python3
"""Load through Caddy while scripts/stack-test.sh rolls the replicas.

    rollout_load.py PORT API_KEY STOP_FILE SUMMARY_JSON

Runs scripts/faults.py's load mix (creates with an Idempotency-Key, reads of
acknowledged writes, searches, lists; four keep-alive clients) against
127.0.0.1:PORT until STOP_FILE exists (at most 15 minutes), then reads every
acknowledged write back through the same port. Writes the summary to
SUMMARY_JSON and exits 1 on any failed request or missing write.
"""
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from faults import Load  # noqa: E402  (scripts/faults.py)


class KeyOnly:
    """All that faults.Load needs of its environment: the API key."""

    def __init__(self, key: str):
        self.key = key


def main() -> int:
    port, key, stop_file, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    load = Load(KeyOnly(key), port, "rollout").start()
    deadline = time.time() + 900
    while not stop_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    load.stop()
    s = load.summary()
    missing = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for cid in load.acked:
        conn.request("GET", f"/contexts/{cid}", headers={"Authorization": f"Bearer {key}"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            missing.append((cid, r.status))
    s["acknowledged_writes_read_back"] = len(load.acked) - len(missing)
    s["timed_out"] = not stop_file.exists()
    out.write_text(json.dumps(s, indent=2))
    print(json.dumps(s), file=sys.stderr)
    ok = s["failed_requests"] == 0 and not missing and not s["timed_out"] and s["acknowledged_writes"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
