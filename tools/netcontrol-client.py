#!/usr/bin/env python3
"""A tiny NetControl-style client for `fastedge split`'s control socket.

Sends rules shaped like Zeek NetControl's (rule type, entity, target, expire) as JSON lines and
prints the answer: {"ok": true, "result": "added", "id": N, "rules": [...]}, or
{"ok": false, "result": "error", "error": "..."}.

  netcontrol-client.py SOCKET drop-address 192.0.2.7[/32] [--expire SECONDS]
  netcontrol-client.py SOCKET whitelist-address 192.0.2.7 [--expire SECONDS]
  netcontrol-client.py SOCKET drop-connection ORIG_H ORIG_P/PROTO RESP_H RESP_P/PROTO [--expire S]
  netcontrol-client.py SOCKET remove ID

Exit status 0 when the answer is ok, 1 otherwise. Standard library only.
"""
import argparse
import json
import socket
import sys


def request(path, message):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall((json.dumps(message) + "\n").encode())
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("socket")
    p.add_argument("action", choices=["drop-address", "whitelist-address", "drop-connection", "remove"])
    p.add_argument("args", nargs="+")
    p.add_argument("--expire", type=float, help="seconds until the rule goes away")
    a = p.parse_args()

    if a.action == "remove":
        message = {"cmd": "netcontrol", "op": "remove", "id": int(a.args[0])}
    else:
        if a.action == "drop-connection":
            if len(a.args) != 4:
                p.error("drop-connection ORIG_H ORIG_P/PROTO RESP_H RESP_P/PROTO")
            orig_h, orig_p, resp_h, resp_p = a.args
            entity = {"ty": "connection",
                      "conn": {"orig_h": orig_h, "orig_p": orig_p, "resp_h": resp_h, "resp_p": resp_p}}
        else:
            entity = {"ty": "address", "ip": a.args[0]}
        rule = {"ty": "whitelist" if a.action == "whitelist-address" else "drop",
                "target": "forward", "entity": entity}
        if a.expire is not None:
            rule["expire"] = a.expire
        message = {"cmd": "netcontrol", "op": "add", "rule": rule}

    answer = request(a.socket, message)
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
