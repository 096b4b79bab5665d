"""Start time, peak memory and DynamoDB calls of the authorizer binary, against a baseline.

Runs the release binary (host architecture) under a minimal Lambda Runtime API served here, with
its DynamoDB traffic going through a counting proxy to the local emulator:

  1. start -> ready: spawn to the first poll for an invocation, median of N runs;
  2. peak RSS (VmHWM) after DECISIONS decisions spread over TENANTS tenants;
  3. DynamoDB calls per admitted decision, and per refused decision during a flood;
  4. decision time, p50 and p99: from handing the function an event to its answer, as the
     Runtime API sees it (so it includes the emulator's answer to every call the decision makes).

The baseline is examples/echo.rs (lambda_runtime alone), measured the same way in the same run.
With --previous, a build of an earlier commit (on tables of its own, seeded by its own CLI) runs
the same load in the same run, for the figures that change from one commit to the next.
Run through infra/bench/authorizer (builds the binaries, starts the emulator).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "authorizer", "rest-request.json")


class CountingProxy:
    """TCP proxy that counts DynamoDB operations by their X-Amz-Target header."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.counts = {}
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.counts = {}

    def snapshot(self):
        with self.lock:
            return dict(self.counts)

    def _accept(self):
        while True:
            client, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        server = socket.create_connection(self.upstream)

        def pump(src, dst, inspect):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if inspect:
                        for line in data.split(b"\r\n"):
                            if line.lower().startswith(b"x-amz-target:"):
                                op = line.split(b".")[-1].strip().decode()
                                with self.lock:
                                    self.counts[op] = self.counts.get(op, 0) + 1
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(server, client, False), daemon=True).start()
        pump(client, server, True)


class RuntimeApi:
    """The Lambda Runtime API, serving events from a queue and recording the first poll."""

    def __init__(self):
        self.events = []
        self.served = 0
        self.answered = 0
        self.errors = 0
        self.allowed = 0
        self.first_poll = None
        self.handed = {}
        self.decision_ms = []
        self.cond = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this, Nagle's algorithm and
            # delayed ACKs add 40 ms to every invocation.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                with api.cond:
                    if api.first_poll is None:
                        api.first_poll = time.monotonic()
                        api.cond.notify_all()
                    while api.served >= len(api.events):
                        api.cond.wait()
                    body = json.dumps(api.events[api.served]).encode()
                    request_id = f"req-{api.served}"
                    api.served += 1
                    api.handed[request_id] = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:authorizer")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                answered_at = time.monotonic()
                request_id = self.path.split("/")[-2]
                with api.cond:
                    handed = api.handed.pop(request_id, None)
                    if handed is not None:
                        api.decision_ms.append((answered_at - handed) * 1000)
                    api.answered += 1
                    api.allowed += b'"Effect":"Allow"' in body
                    api.errors += self.path.endswith("/error")
                    api.cond.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the function process is killed mid-connection at the end of a run

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def run(self, events):
        with self.cond:
            self.events.extend(events)
            self.cond.notify_all()
            while self.answered < len(self.events):
                self.cond.wait()


def environment(args, runtime_port, ddb_endpoint, tables=None):
    state_table, policy_table = tables or (args.state_table, args.policy_table)
    env = dict(os.environ)
    env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{runtime_port}",
        "AWS_LAMBDA_FUNCTION_NAME": "authorizer",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_LOG_GROUP_NAME": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_ENDPOINT_URL": ddb_endpoint,
        "TOLLGATE_STATE_TABLE": state_table,
        "TOLLGATE_POLICY_TABLE": policy_table,
        # The emulator is single-threaded and slower than DynamoDB: do not let budgets trip.
        "TOLLGATE_STORE_BUDGET_MS": "5000",
        "TOLLGATE_STORE_ATTEMPT_MS": "5000",
        "TOLLGATE_LOG": "warn",
    })
    return env


def start_time(binary, args, ddb_endpoint, runs):
    times = []
    for _ in range(runs):
        api = RuntimeApi()
        started = time.monotonic()
        proc = subprocess.Popen([binary], env=environment(args, api.port, ddb_endpoint),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with api.cond:
            while api.first_poll is None:
                if not api.cond.wait(timeout=10):
                    proc.kill()
                    sys.exit(f"{binary} never polled the runtime API")
        times.append((api.first_poll - started) * 1000)
        proc.kill()
        proc.wait()
        api.server.shutdown()
    return statistics.median(times)


def event(key):
    with open(FIXTURE, encoding="utf-8") as f:
        e = json.load(f)
    e["headers"]["x-api-key"] = key
    e["multiValueHeaders"]["x-api-key"] = [key]
    return e


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def rss_split_mib(pid):
    """Resident memory at the end of a run, anonymous (heap, tables) and file-backed (the binary's
    pages and the libraries'): the peak's two parts."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                fields[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return {"anon": fields.get("RssAnon"), "file": fields.get("RssFile")}


RSS_SPLIT = {}


def percentile(values, q):
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None


def load_run(binary, args, proxy, events_phases, tables=None):
    """Feeds phases of events to one process; returns (peak RSS KiB, per-phase op counts,
    errors, decision times in ms of the first phase)."""
    api = RuntimeApi()
    proc = subprocess.Popen([binary], env=environment(args, api.port, f"http://127.0.0.1:{proxy.port}", tables),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = []
    first_phase_ms = None
    for phase in events_phases:
        proxy.reset()
        allowed_before = api.allowed
        api.run(phase)
        counts.append((proxy.snapshot(), api.allowed - allowed_before))
        if first_phase_ms is None:
            first_phase_ms = list(api.decision_ms)
    rss = peak_rss_kib(proc.pid)
    RSS_SPLIT[binary] = rss_split_mib(proc.pid)
    proc.kill()
    proc.wait()
    api.server.shutdown()
    return rss, counts, api.errors, first_phase_ms


def times(ms):
    return {"p50": percentile(ms, 0.50), "p99": percentile(ms, 0.99)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--authorizer", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--moto-port", type=int, required=True)
    p.add_argument("--state-table", required=True)
    p.add_argument("--policy-table", required=True)
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--decisions", type=int, default=100_000)
    p.add_argument("--flood", type=int, default=10_000)
    p.add_argument("--start-runs", type=int, default=20)
    p.add_argument("--previous", help="an earlier commit's authorizer, run on its own tables")
    p.add_argument("--previous-state-table")
    p.add_argument("--previous-policy-table")
    args = p.parse_args()

    moto = f"http://127.0.0.1:{args.moto_port}"
    proxy = CountingProxy(args.moto_port)
    ours_start = start_time(args.authorizer, args, moto, args.start_runs)
    base_start = start_time(args.baseline, args, moto, args.start_runs)

    keys = [f"tg_bench_{i:06d}" for i in range(args.tenants)]
    admitted = [event(keys[i % args.tenants]) for i in range(args.decisions)]
    flood = [event(keys[0])] * args.flood
    ours_rss, ((load_counts, load_allowed), (flood_counts, flood_allowed)), errors, ours_ms = load_run(
        args.authorizer, args, proxy, [admitted, flood])
    base_rss, _, _, base_ms = load_run(args.baseline, args, proxy, [admitted])

    writes = load_counts.get("UpdateItem", 0)
    flood_refused = args.flood - flood_allowed
    flood_writes_beyond_admitted = flood_counts.get("UpdateItem", 0) - flood_allowed
    report = {
        "start_ms": {"authorizer": round(ours_start, 1), "baseline": round(base_start, 1),
                     "ratio": round(ours_start / base_start, 2)},
        "peak_rss_mib": {"authorizer": round(ours_rss / 1024, 1), "baseline": round(base_rss / 1024, 1),
                         "ratio": round(ours_rss / base_rss, 2)},
        "rss_at_end_mib": {"authorizer": RSS_SPLIT[args.authorizer], "baseline": RSS_SPLIT[args.baseline]},
        "decision_ms": {"authorizer": times(ours_ms), "baseline": times(base_ms)},
        "decisions": args.decisions, "tenants": args.tenants, "errors": errors,
        "dynamodb_calls_per_decision": {op: round(n / args.decisions, 3) for op, n in sorted(load_counts.items())},
        "admitted": load_allowed,
        "state_writes_per_admitted_decision": round(writes / max(load_allowed, 1), 3),
        "flood": {"requests": args.flood, "admitted": flood_allowed, "refused": flood_refused,
                  "calls": flood_counts,
                  "dynamodb_calls_per_refused_decision": round(max(flood_writes_beyond_admitted, 0) / max(flood_refused, 1), 4)},
    }
    if args.previous:
        # This build's figures first: the previous build's run takes as long again.
        print(json.dumps(report), file=sys.stderr, flush=True)
        tables = (args.previous_state_table, args.previous_policy_table)
        prev_rss, ((prev_counts, prev_allowed), _), prev_errors, prev_ms = load_run(
            args.previous, args, proxy, [admitted, flood], tables)
        report["previous"] = {
            "peak_rss_mib": round(prev_rss / 1024, 1),
            "rss_at_end_mib": RSS_SPLIT[args.previous],
            "rss_ratio": round(ours_rss / prev_rss, 2),
            "decision_ms": times(prev_ms),
            "p50_ratio": round(times(ours_ms)["p50"] / times(prev_ms)["p50"], 2),
            "p99_ratio": round(times(ours_ms)["p99"] / times(prev_ms)["p99"], 2),
            "errors": prev_errors, "admitted": prev_allowed,
            "state_writes_per_admitted_decision": round(prev_counts.get("UpdateItem", 0) / max(prev_allowed, 1), 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
