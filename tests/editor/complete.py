#!/usr/bin/env python3
"""Drives a YAML language server over stdio as an editor would, on a copy of the
shipped retention.yaml: initialize, didOpen, then completion at two places, and checks
that the keys come from Lethe's schema (named by the file's first line).

    python3 tests/editor/complete.py [SERVER_COMMAND...]

SERVER_COMMAND defaults to `yaml-language-server --stdio` on PATH (e.g. `npm install
yaml-language-server` in a scratch folder, then /that/folder/node_modules/.bin/
yaml-language-server --stdio). Needs no network: the schema is a local file.
Exit 0 when every expectation holds; prints what the server answered.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Server:
    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.next_id = 0
        self.replies = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        out = self.p.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.decode().strip()
                if not line:
                    break
                k, v = line.split(":", 1)
                headers[k.lower()] = v.strip()
            body = json.loads(out.read(int(headers["content-length"])))
            if "id" in body and "method" in body:
                # A request from the server (workspace/configuration, ...): answer it.
                result = [{}] if body["method"] == "workspace/configuration" else None
                if body["method"] == "workspace/configuration":
                    result = [self.settings for _ in body["params"]["items"]]
                self._send({"jsonrpc": "2.0", "id": body["id"], "result": result})
            elif "id" in body:
                with self.cv:
                    self.replies[body["id"]] = body
                    self.cv.notify_all()

    def _send(self, msg):
        data = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
        self.p.stdin.flush()

    def request(self, method, params, timeout=30):
        self.next_id += 1
        i = self.next_id
        self._send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        with self.cv:
            if not self.cv.wait_for(lambda: i in self.replies, timeout):
                raise SystemExit(f"no answer to {method} within {timeout} s")
            reply = self.replies.pop(i)
        if "error" in reply:
            raise SystemExit(f"{method}: {reply['error']}")
        return reply["result"]

    def notify(self, method, params):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})


def labels(result):
    items = result["items"] if isinstance(result, dict) else result
    return sorted(i["label"] for i in items)


def main():
    cmd = sys.argv[1:] or [shutil.which("yaml-language-server") or "yaml-language-server", "--stdio"]
    work = tempfile.mkdtemp(prefix="lethe-editor-")
    shutil.copy(os.path.join(ROOT, "retention.schema.json"), work)
    text = open(os.path.join(ROOT, "retention.yaml"), encoding="utf-8").read()
    assert text.startswith("# yaml-language-server: $schema=retention.schema.json\n")
    # A new, empty line at the end of the safety: section, indented as its keys.
    lines = text.split("\n")
    at = next(i for i, l in enumerate(lines) if l.startswith("safety:"))
    end = at + 1
    while lines[end].startswith("  "):
        end += 1
    lines.insert(end, "  ")
    # And one at the top level, after the last line.
    lines.append("")
    doc = "\n".join(lines)
    path = os.path.join(work, "retention.yaml")
    open(path, "w", encoding="utf-8").write(doc)
    uri = "file://" + path

    s = Server(cmd)
    s.settings = {"validate": True, "completion": True, "hover": True, "schemaStore": {"enable": False}}
    s.request("initialize", {"processId": os.getpid(), "rootUri": "file://" + work,
                             "capabilities": {"textDocument": {"completion": {"completionItem": {"snippetSupport": False}}},
                                              "workspace": {"configuration": True}}})
    s.notify("initialized", {})
    s.notify("workspace/didChangeConfiguration", {"settings": {"yaml": s.settings}})
    s.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": doc}})

    safety = labels(s.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": {"line": end, "character": 2}}))
    top = labels(s.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": {"line": len(lines) - 1, "character": 0}}))
    hover = s.request("textDocument/hover", {"textDocument": {"uri": uri}, "position": {"line": at + 2, "character": 4}})
    # A policy being written: its safety: section has only mode so far.
    new_doc = ("# yaml-language-server: $schema=retention.schema.json\n"
               "library: New Library\nsafety:\n  mode: dry-run\n  \nprofile: koha\n")
    new_uri = "file://" + os.path.join(work, "new.yaml")
    open(new_uri[len("file://"):], "w", encoding="utf-8").write(new_doc)
    s.notify("textDocument/didOpen", {"textDocument": {"uri": new_uri, "languageId": "yaml", "version": 1, "text": new_doc}})
    fresh = labels(s.request("textDocument/completion", {"textDocument": {"uri": new_uri}, "position": {"line": 4, "character": 2}}))
    modes = labels(s.request("textDocument/completion", {"textDocument": {"uri": new_uri}, "position": {"line": 3, "character": 8}}))
    print("completion under safety: in a new file:", fresh)
    print("completion of the value of mode:", modes)
    print("completion under safety: of retention.yaml at line %d:" % (end + 1), safety)
    print("completion at the top level:", top)
    print("hover on", lines[at + 2].strip(), "->", json.dumps(hover["contents"] if hover else None)[:300])
    s.request("shutdown", None)
    s.notify("exit", None)

    failed = []
    for want in ["batch_size", "max_fraction", "max_clock_skew", "min_retention", "max_rounds"]:
        if want not in fresh:
            failed.append(f"{want} not offered under safety: in a new file")
    for want in ["enforce", "dry-run"]:
        if want not in modes:
            failed.append(f"{want} not offered as a value of safety.mode")
    # Keys of safety: not yet in the file are offered (those present are not repeated).
    for want in ["max_rounds"]:
        if want not in safety:
            failed.append(f"{want} not offered under safety:")
    for unwanted in ["library", "database"]:
        if unwanted in safety:
            failed.append(f"top-level key {unwanted} offered under safety:")
    for want in ["metrics", "anonymous_patron"]:
        if want not in top:
            failed.append(f"{want} not offered at the top level")
    if not hover or "1 to 10000" not in json.dumps(hover):
        failed.append("no schema description on hover over batch_size")
    for f in failed:
        print("FAILED:", f)
    print("editor check:", "ok" if not failed else "FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
