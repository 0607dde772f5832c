"""A veth pair between this network namespace and a new one, for fault tests
and benchmarks that need a real link between two "machines".

Not part of the data path. `Veth.create()` makes the namespace and the pair
(needs root; otherwise it returns None and says why, so callers can fall
back to loopback and report it). A process runs on the far side under
`exec_prefix()` (`ip netns exec NS ...`, which execs in place: the pid is
the command's own). `partition()` takes the near end of the link down: the
kernel then drops every packet between the two sides, established TCP
connections hear nothing (no RST, no FIN) and new ones fail, as in a real
network partition; `heal()` brings it back and the routes return with it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Veth:
    ns: str
    host_if: str  # the end in this namespace
    peer_if: str  # the end inside `ns`
    host_ip: str
    peer_ip: str

    @classmethod
    def create(
        cls, ns: str, host_if: str, peer_if: str, host_ip: str, peer_ip: str, prefix: int = 30
    ) -> tuple[Veth | None, str]:
        """Make the namespace and the pair (a leftover of the same names is
        removed first). Returns (link, "") or (None, why not)."""
        import os

        if os.geteuid() != 0:
            return None, "not root: cannot create network namespaces"
        link = cls(ns, host_if, peer_if, host_ip, peer_ip)
        link.destroy()
        try:
            ip("netns", "add", ns)
            ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
            ip("link", "set", peer_if, "netns", ns)
            ip("addr", "add", f"{host_ip}/{prefix}", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("-n", ns, "addr", "add", f"{peer_ip}/{prefix}", "dev", peer_if)
            ip("-n", ns, "link", "set", peer_if, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            link.destroy()
            why = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
            return None, f"could not create the namespace: {why}"
        return link, ""

    def exec_prefix(self) -> list[str]:
        """Prefix of a command line that runs the command inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def partition(self) -> None:
        ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        ip("link", "del", self.host_if, check=False)
        ip("netns", "del", self.ns, check=False)
