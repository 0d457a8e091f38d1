"""Test bed CLI (``scripts/testbed``, or ``python -m dltestbed``): N fake hosts (own netns, PID and mount namespace, sshd) on a private bridge.

    testbed up N [--prefix P] [--subnet CIDR] [--dir D]   create (replacing a bed with that prefix)
    testbed down [--prefix P] [--dir D] | down --all      tear down (idempotent, state.json optional)
    testbed status [--json]                               hosts, addresses, link, sshd
    testbed link HOST down|up                             partition / reconnect a host
    testbed sshd HOST stop|start                          stop / start only the sshd listener
    testbed exec HOST -- CMD...                           run CMD inside the host's namespaces
    testbed ssh HOST [-- CMD...]                          OpenSSH to the host with the bed key
    testbed inventory                                     print the TOML inventory fragment again

HOST is h1, h2, ... (or the netns name, the address, or the index).  See docs/testbed.md.
"""

import argparse
import json
import os
import sys

from . import bed as tb


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefix", default=tb.DEFAULT_PREFIX, help=f"name prefix of the bed (default {tb.DEFAULT_PREFIX})")
    p.add_argument("--dir", default=None, help="bed directory (default /var/tmp/dltb-PREFIX)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="create a bed of N hosts")
    p.add_argument("n", type=int)
    p.add_argument("--subnet", default=tb.DEFAULT_SUBNET,
                   help=f"IPv4 subnet (default {tb.DEFAULT_SUBNET}; 'auto' picks a free one)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for every sshd (default 10)")
    p.add_argument("--quiet", "-q", action="store_true")
    _common(p)

    p = sub.add_parser("down", help="tear a bed down")
    p.add_argument("--all", action="store_true", help="every bed on this machine")
    _common(p)

    p = sub.add_parser("status", help="show the bed")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("inventory", help="print the TOML inventory fragment")
    p.add_argument("--json", action="store_true", help="the library's dict instead")
    _common(p)

    p = sub.add_parser("link", help="take a host's link down (partition) or up")
    p.add_argument("host")
    p.add_argument("state", choices=["down", "up"])
    _common(p)

    p = sub.add_parser("sshd", help="stop or start a host's sshd listener")
    p.add_argument("host")
    p.add_argument("action", choices=["stop", "start"])
    _common(p)

    p = sub.add_parser("exec", help="run a command inside a host's namespaces")
    p.add_argument("host")
    p.add_argument("command", nargs="*", help="after --")
    _common(p)

    p = sub.add_parser("ssh", help="ssh to a host with the bed key")
    p.add_argument("host")
    p.add_argument("command", nargs="*", help="after --")
    _common(p)

    # Everything after the first `--` is the command, untouched by option parsing.
    argv = list(sys.argv[1:] if argv is None else argv)
    tail = []
    if "--" in argv:
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    if hasattr(a, "command"):
        a.command = a.command + tail
    elif tail:
        ap.error(f"{a.cmd}: unexpected arguments after --")
    try:
        if a.cmd == "up":
            log = (lambda m: None) if a.quiet else (lambda m: print(f"testbed: {m}", file=sys.stderr))
            bed = tb.TestBed.create(a.n, prefix=a.prefix, subnet=a.subnet, dir=a.dir, timeout=a.timeout, log=log)
            sys.stdout.write(bed.inventory_toml())
            return 0
        if a.cmd == "down":
            if a.all:
                done = tb.TestBed.teardown_all(None)
            else:
                done = tb.TestBed.teardown_all(a.prefix, dir=a.dir)
            print(f"testbed: torn down: {', '.join(done) or 'nothing found'}", file=sys.stderr)
            return 0
        bed = tb.TestBed.load(a.prefix, a.dir)
        if a.cmd == "status":
            rows = bed.status()
            if a.json:
                print(json.dumps({"prefix": bed.prefix, "subnet": bed.subnet, "dir": bed.dir, "hosts": rows}, indent=2))
            else:
                print(f"bed {bed.prefix}  subnet {bed.subnet}  bridge {bed.bridge} {bed.gateway}  dir {bed.dir}")
                print(f"{'HOST':<6} {'ADDRESS':<15} {'NETNS':<16} {'INIT':>8} {'RUNNING':<8} {'LINK':<5} SSHD")
                for r in rows:
                    print(f"{r['name']:<6} {r['address']:<15} {r['netns']:<16} {r['init_pid'] or '-':>8} "
                          f"{'yes' if r['running'] else 'NO':<8} {'up' if r['link_up'] else 'DOWN':<5} "
                          f"{'running' if r['sshd_running'] else 'stopped'}")
            return 0
        if a.cmd == "inventory":
            sys.stdout.write(json.dumps(bed.inventory(), indent=2) + "\n" if a.json else bed.inventory_toml())
            return 0
        if a.cmd == "link":
            bed.link(a.host, a.state == "up")
            return 0
        if a.cmd == "sshd":
            bed.sshd(a.host, a.action == "start")
            return 0
        if a.cmd == "exec":
            cmd = a.command
            if not cmd:
                ap.error("exec: give a command after --")
            argv = bed.nsenter_argv(a.host, cmd)
            sys.stdout.flush()
            os.execv(argv[0], argv)
        if a.cmd == "ssh":
            # like ssh(1): the words are joined with spaces into one remote shell command
            argv = bed.ssh_argv(a.host, " ".join(a.command) or None)
            sys.stdout.flush()
            os.execv(argv[0], argv)
    except tb.TestBedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
