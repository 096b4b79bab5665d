"""Serve moto's AWS emulation on loopback, single-threaded.

moto's own server is threaded, and its DynamoDB conditional writes are then not atomic: a
concurrent token-bucket test over-admits. One thread makes every request atomic, which is the
guarantee the real service gives per item.

Usage: moto_server.py PORT_FILE  -- binds 127.0.0.1 on a free port and writes the port to PORT_FILE.
"""

import logging
import os
import socket
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    port_file = sys.argv[1]
    # A test that must see no other test's usage plans or keys names a Region of its own, one
    # AWS does not have (there are more such tests than Regions).
    os.environ["MOTO_ALLOW_NONEXISTENT_REGION"] = "true"
    # One line per request would dwarf everything else the tests print.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=MotoRequestHandler)
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with open(port_file, "w", encoding="ascii") as f:
        f.write(str(server.server_port))
    server.serve_forever()


if __name__ == "__main__":
    main()
