"""A VPC of moto on loopback, whose instances answer health checks as they would in a real VPC.

moto hands out private IPs from a subnet's CIDR (from its 4th address, AWS reserving the first ones). Here the
VPC is a loopback /24 and an HTTP server listens on every address its subnets hand out (200 on /health), so
Consul's or Skynet's check of an EC2 instance reaches "the instance". stop(address) makes one stop answering.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .proc import free_port


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class LoopbackVpc:
    def __init__(self, ec2):
        self.ec2, self.port = ec2, free_port()
        self.vpc, self.subnets, self._servers = None, [], {}

    def create(self, cidr: str, subnets: dict):
        """The VPC and its subnets ({zone: CIDR inside cidr}); a server on every address they hand out."""
        self.vpc = self.ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        for zone, block in subnets.items():
            subnet = self.ec2.create_subnet(VpcId=self.vpc, CidrBlock=block, AvailabilityZone=zone)["Subnet"]
            self.subnets.append({"id": subnet["SubnetId"], "zone": zone})
            for address in list(ipaddress.ip_network(block).hosts())[3:]:
                self.serve(str(address))

    def serve(self, address: str):
        if address not in self._servers:
            server = ThreadingHTTPServer((address, self.port), _Health)
            threading.Thread(target=server.serve_forever, name=f"health {address}", daemon=True).start()
            self._servers[address] = server

    def stop(self, address: str):
        """The instance at address stops answering: connections to it are refused."""
        server = self._servers.pop(address)
        server.shutdown()
        server.server_close()

    def close(self):
        for address in list(self._servers):
            with contextlib.suppress(OSError):
                self.stop(address)


@contextlib.contextmanager
def loopback_vpc(ec2, cidr: str, subnets: dict):
    """A LoopbackVpc whose servers are all stopped at the end, also on failure."""
    vpc = LoopbackVpc(ec2)
    try:
        vpc.create(cidr, subnets)
        yield vpc
    finally:
        vpc.close()
