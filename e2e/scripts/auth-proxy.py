#!/usr/bin/env python3
"""A registry that wants credentials, for the pull-secret tests: every
request must carry HTTP Basic USER:PASSWORD, or gets 401 with a Basic
challenge (as a registry behind htpasswd answers); the others are passed
to the crane registry BACKEND unchanged.

Usage: auth-proxy.py LISTEN_HOST:PORT BACKEND_HOST:PORT USER PASSWORD
"""
import base64
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

listen, backend, user, password = sys.argv[1:5]
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def handle_any(self):
        body = self.body()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cellule-e2e"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = http.client.HTTPConnection(backend, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"authorization", "host"}}
        headers["Host"] = backend
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any


host, port = listen.rsplit(":", 1)
ThreadingHTTPServer((host, int(port)), Proxy).serve_forever()
