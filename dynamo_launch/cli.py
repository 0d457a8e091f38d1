"""The ``dynamo-launch`` command line. The only module that prints or exits.

asyncio, structlog (``logs``), the loader, the planner and the daemon are imported by the
commands that use them: the quick commands (``status``, ``validate``, ``plan``) must not pay
for what they do not use at every start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from . import __version__, control
from .errors import DynamoLaunchError, InventoryError, NoDaemon, NotPublished, PreflightFailed
from .printable import clean

if TYPE_CHECKING:
    from .model import Inventory
    from .plan import Plan
    from .preflight import Check

__all__ = ["main"]

INVENTORY = click.argument("inventory", type=click.Path(dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dynamo-launch")
def main() -> None:
    """Bring up and supervise an NVIDIA Dynamo inference cluster on bare-metal hosts.

    One TOML inventory describes the hosts and the deployment; see
    docs/inventory.md for every key.
    """


@main.command()
@INVENTORY
def validate(inventory: str) -> None:
    """Check INVENTORY and report every problem, one line each (exit 1 if any)."""
    from .plan.render import count

    result = _plan(inventory)
    click.echo(
        f"{inventory}: ok — cluster {result.cluster!r}, {count(len(result.hosts), 'host')}, "
        f"{count(len(result.processes), 'process')}, {count(len(result.gangs), 'gang')}"
    )


@main.command()
@INVENTORY
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--diff", "as_diff", is_flag=True,
              help="Show what `reload` would change in the running cluster: new, removed, restarted, unchanged.")
@click.option("--exit-code", is_flag=True,
              help="With --diff: exit 1 when a reload would change something, 0 when not (as `git diff --exit-code`).")
@click.option("--all-at-once", is_flag=True, help="With --diff: the steps of `reload --all-at-once`.")
def plan(inventory: str, as_json: bool, as_diff: bool, exit_code: bool, all_at_once: bool) -> None:
    """Print what `up` would start: per host, in start order, pasteable commands (secrets masked)."""
    from .plan.render import to_json, to_text

    if (exit_code or all_at_once) and not as_diff:
        _fail(f"{'--exit-code' if exit_code else '--all-at-once'} goes with --diff")
    result = _plan(inventory)
    if as_diff:
        answer = _ask(result.cluster, "diff", path=os.path.abspath(inventory), all_at_once=all_at_once)
        click.echo(_json(answer["diff"]) if as_json else _lines(answer["text"]), nl=False)
        d = answer["diff"]
        sys.exit(1 if exit_code and (d["added"] or d["removed"] or d["changed"]) else 0)
    click.echo(to_json(result) if as_json else to_text(result), nl=False)


def _json(doc: Any) -> str:
    """One JSON document as every command prints it: indented by 2, a newline at the end.
    (Streams — ``events --json`` — are JSON Lines: one compact object per line.)"""
    return json.dumps(doc, indent=2) + "\n"


def _plan(path: str) -> Plan:
    """Load, validate and plan ``path``, or print every problem and exit 1."""
    return _load(path)[1]


def _load(path: str) -> tuple[Inventory, Plan]:
    """The inventory and plan of ``path``, or print every problem and exit 1."""
    from .load import load_plan

    try:
        return load_plan(path)
    except InventoryError as e:
        n = len(e.problems)
        if _json_logs:
            for problem in e.problems:
                _log().error(str(problem))
            _fail(f"{path}: {n} problem{'s' if n != 1 else ''}")
        for problem in e.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{path}: {n} problem{'s' if n != 1 else ''}", err=True)
        sys.exit(1)
    except DynamoLaunchError as e:
        _fail(str(e))


# --- running a cluster --------------------------------------------------------------------------------

STOP_UNVERIFIED = 4  # `up` stopped as asked but could not verify every host (the unit does not restart it)

CLUSTER = click.option("--cluster", "-c", default=None, metavar="NAME",
                       help="The cluster to talk to (needed only when several daemons run here).")


@main.command()
@INVENTORY
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust hosts whose key is not in known_hosts yet (and record it). A changed key is always refused.")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto", show_default=True,
              help="auto: human-readable on a terminal, JSON lines otherwise (journald). In JSON every line is JSON, "
                   "the preflight checks included.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="The least level logged (default info; -v is debug, -q is warning).")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.option("--require-all-hosts", is_flag=True,
              help="Resuming a cluster, refuse (start nothing) when a host does not answer, instead of supervising "
                   "the others and that host's processes as UNKNOWN until it answers. A first bring-up always "
                   "needs every host.")
def up(inventory: str, accept_new_host_keys: bool, log_format: str, log_level: str | None, verbose: bool, quiet: bool,
       require_all_hosts: bool) -> None:
    """Start the cluster of INVENTORY and supervise it until SIGTERM/SIGINT (then stop it all).

    Preflight checks every host first; a failure starts nothing. If processes of this
    cluster are already running (a previous daemon was killed), they are adopted, not
    started again.
    """
    import asyncio

    from .daemon import Daemon
    from .sdnotify import Notifier

    notifier = Notifier()  # first: it takes systemd's variables out of the environment children inherit
    _activate_own_environment()
    json_output = None if log_format == "auto" else log_format == "json"
    block = _live_block() if json_output is not True else None
    _configure_logs(json_output, log_level, verbose, quiet, stream=block)
    inv, plan = _load(inventory)
    daemon = Daemon(plan, inv, inventory, accept_new_host_keys=accept_new_host_keys, notifier=notifier,
                    require_all_hosts=require_all_hosts)

    async def run():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        try:
            await daemon.prepare(on_checks=_show_checks)
        except BaseException:
            await daemon.close()
            raise
        return await daemon.serve(live=_show_rows(block) if block else None)

    try:
        report = asyncio.run(run())
    except PreflightFailed as e:
        _fail(str(e))
    except DynamoLaunchError as e:
        _fail(str(e))
    finally:
        if block is not None:
            block.close()
    _report_stop(report.stopped, report.unknown, report.leftovers)
    sys.exit(0 if report.clean else STOP_UNVERIFIED)


@main.command()
@INVENTORY
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for a running daemon to stop it all.")
def down(inventory: str, timeout: float) -> None:
    """Stop every process of INVENTORY's cluster (reverse dependency order) and verify none is left.

    With a daemon running, it does the stopping and exits; without one, the processes
    recorded on the hosts are found and stopped directly.
    """
    import asyncio

    from .daemon import Daemon

    inv, plan = _load(inventory)
    _activate_own_environment()
    try:
        try:
            result = control.request(control.socket_path(plan.cluster), "down", timeout=timeout)
            stopped, unknown, leftovers = result["stopped"], result["unknown"], result["leftovers"]
        except NoDaemon:
            _configure_logs(None, None, False, False)
            report = asyncio.run(_down_directly(Daemon(plan, inv, inventory)))
            stopped, unknown, leftovers = report.stopped, report.unknown, report.leftovers
            control.remove_stale(control.socket_path(plan.cluster))  # a crashed daemon's
    except DynamoLaunchError as e:
        _fail(str(e))
    _report_stop(stopped, unknown, leftovers)
    sys.exit(0 if not unknown and not leftovers else 1)


async def _down_directly(daemon):
    try:
        return await daemon.down()
    finally:
        await daemon.close()


@main.command()
@CLUSTER
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's snapshot as JSON.")
@click.option("--watch", "-w", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between redraws with --watch.")
@click.option("--etcd", "etcd", default=None, metavar="ENDPOINTS",
              help="Read the status the daemon mirrors to etcd (from any node; needs --cluster).")
@click.option("--etcd-ca", envvar="ETCD_AUTH_CA", default=None, metavar="FILE",
              help="CA certificate an https:// etcd's must chain to [env: ETCD_AUTH_CA].")
@click.option("--etcd-cert", envvar="ETCD_AUTH_CLIENT_CERT", default=None, metavar="FILE",
              help="Client certificate for an https:// etcd that asks for one [env: ETCD_AUTH_CLIENT_CERT].")
@click.option("--etcd-key", envvar="ETCD_AUTH_CLIENT_KEY", default=None, metavar="FILE",
              help="The client certificate's key [env: ETCD_AUTH_CLIENT_KEY].")
def status(cluster: str | None, as_json: bool, watch: bool, interval: float, etcd: str | None,
           etcd_ca: str | None, etcd_cert: str | None, etcd_key: str | None) -> None:
    """Every process of the running cluster: host, state, pid, uptime, restarts, generation, health.

    Exit status 3 when no daemon is running (or, with --etcd, none has published the cluster).
    """
    from .status import render

    if etcd and not cluster:
        _fail("--etcd needs --cluster NAME")
    while True:
        snap = _from_etcd(etcd, cluster, (etcd_ca, etcd_cert, etcd_key)) if etcd else _ask(cluster, "status", timeout=5.0)
        text = _json(snap) if as_json else render(snap)
        if watch:
            click.clear()
        click.echo(text, nl=False)
        if not watch:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@main.command("logs")
@click.argument("name")
@CLUSTER
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the process writes, until Ctrl-C.")
@click.option("--lines", "-n", default=100, show_default=True, help="How many lines from the end to show first.")
def logs_cmd(name: str, cluster: str | None, follow: bool, lines: int) -> None:
    """Print the log of process NAME, read from its node."""
    click.echo(_ask(cluster, "logs", name=name, lines=lines)["text"], nl=False)
    if not follow:
        return
    offset = _ask(cluster, "logs", name=name, offset=0, max_bytes=0)["size"]
    try:
        while True:
            chunk = _ask(cluster, "logs", name=name, offset=offset, max_bytes=1 << 20)
            click.echo(chunk["data"], nl=False)
            offset = chunk["offset"]
            if not chunk["data"]:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return


WAIT = click.option("--wait", is_flag=True, help="Wait until every step is done, report each, exit 1 if one failed.")
ALL_AT_ONCE = click.option("--all-at-once", is_flag=True,
                           help="Take every replica of a group down together instead of max_unavailable at a time "
                                "(its model is unavailable meanwhile).")
ROLLOUT_TIMEOUT = 7 * 24 * 3600.0  # --wait: the daemon bounds every step by its startup deadline


@main.command()
@click.argument("target")
@CLUSTER
@WAIT
@ALL_AT_ONCE
def restart(target: str, cluster: str | None, wait: bool, all_at_once: bool) -> None:
    """Restart TARGET: a process, a gang (every member, new generation) or a group; clears FAILED.

    A group restarts max_unavailable replicas at a time (a gang counts as one), each step
    waiting until the new copies are READY (a Dynamo worker: the frontend routes to it).
    """
    answer = _ask(cluster, "restart", timeout=ROLLOUT_TIMEOUT if wait else 30.0, target=target, wait=wait,
                  all_at_once=all_at_once)
    units = answer["steps"]
    click.echo(clean(f"restarting {target} in {len(units)} step(s): " + "; ".join(", ".join(u) for u in units)))
    _report_rollout(answer)


@main.command()
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@CLUSTER
@WAIT
@ALL_AT_ONCE
def reload(inventory: str | None, cluster: str | None, wait: bool, all_at_once: bool) -> None:
    """Re-read the inventory (or INVENTORY) and apply the difference to the running cluster.

    Unchanged processes keep running untouched; changed ones are replaced max_unavailable
    replicas of a group at a time (gangs as a unit), each step waiting until the new copies are
    READY; removed ones stop; new ones start. A bad file changes nothing. Same as SIGHUP to
    `up`. `plan --diff` shows the difference first.
    """
    if inventory:
        cluster = cluster or _plan(inventory).cluster
    args = {"path": os.path.abspath(inventory)} if inventory else {}
    answer = _ask(cluster, "reload", timeout=ROLLOUT_TIMEOUT if wait else 30.0, wait=wait, all_at_once=all_at_once,
                  **args)
    click.echo(_lines(answer["text"]), nl=False)
    if answer.get("previous") and answer.get("inventory") != answer["previous"]:
        click.echo(clean(f"from now on the daemon reads {answer['inventory']} on every reload (SIGHUP, "
                         f"`systemctl reload`), not {answer['previous']}"))
    if answer.get("reloading", True):
        _report_rollout(answer)


def _report_rollout(answer: dict) -> None:
    """What a restart or reload leaves unavailable; with ``--wait``, each step and how it ended."""
    for note in answer.get("unavailable") or ():
        click.echo(clean(f"note: {note}"))
    outcome = answer.get("outcome")
    if outcome is None:
        click.echo("follow it with `dynamo-launch events -f` (or wait for it: --wait)")
        return
    for s in outcome["steps"]:
        how = "ready" if s["ready"] else "NOT READY"
        states = ", ".join(f"{n} {st} (generation {s['generations'][n]})" for n, st in s["states"].items())
        click.echo(clean(f"step {s['step']}/{s['of']}: {states}: {how} after {s['seconds']:.1f}s"))
    if outcome["halted"]:
        _fail(f"halted at {outcome['halted']}")
    click.echo(f"done: {len(outcome['steps'])} step(s)")


@main.command()
@CLUSTER
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--nats", "nats_url", default=None, metavar="URL",
              help="Follow the events on NATS instead of the control socket (from any node; needs --cluster; "
                   "credentials from NATS_AUTH_TOKEN or NATS_AUTH_USERNAME/NATS_AUTH_PASSWORD).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line (JSON Lines).")
def events(cluster: str | None, follow: bool, nats_url: str | None, as_json: bool) -> None:
    """Lifecycle events of the running cluster: started, ready, exited, restarting, gang restarts, failures."""
    line = (lambda e: json.dumps(e, sort_keys=True)) if as_json else _event_line
    if nats_url:
        if not cluster:
            _fail("--nats needs --cluster NAME")
        _events_from_nats(nats_url, cluster, line)
        return
    since = 0
    try:
        while True:
            for e in _ask(cluster, "events", since=since)["events"]:
                click.echo(line(e))
                since = e["seq"]
            if not follow:
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def _event_line(e: dict) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
    return clean(f"{stamp} {e['kind']:<17} {e['message']}")


def _events_from_nats(url: str, cluster: str, line: Callable[[dict], str]) -> None:
    import asyncio

    from .eventbus import subscribe

    async def follow() -> None:
        auth = {k: os.environ[k] for k in ("NATS_AUTH_TOKEN", "NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD",
                                           "NATS_TLS_CA_CERT_PATH", "NATS_TLS_CLIENT_CERT_PATH", "NATS_TLS_CLIENT_KEY_PATH")
                if k in os.environ}
        async with subscribe(url, cluster, auth=auth) as stream:
            async for e in stream:
                click.echo(line(e))

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        return
    except DynamoLaunchError as e:
        _fail(str(e))


@main.command("install-systemd")
@INVENTORY
@click.option("--dry-run", is_flag=True, help="Print what would be written and run (and the unit); change nothing.")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True, metavar="DIR",
              help="Where the dynamo-launch@.service template goes.")
@click.option("--conf-dir", default="/etc/dynamo-launch", show_default=True, metavar="DIR",
              help="Where <cluster>.env (the inventory's path, secrets) goes.")
@click.option("--no-enable", is_flag=True, help="Do not `systemctl enable` the cluster's unit.")
def install_systemd(inventory: str, dry_run: bool, unit_dir: str, conf_dir: str, no_enable: bool) -> None:
    """Install INVENTORY's cluster as the systemd service dynamo-launch@CLUSTER.service.

    Writes the template unit and CLUSTER.env (pointing at INVENTORY's absolute path; other
    lines of an existing file are kept), then runs `systemctl daemon-reload` and `systemctl
    enable`. It does not start the service. See docs/systemd.md.
    """
    from . import systemd_unit

    planned = _plan(inventory)  # every problem, located, before anything is written
    cluster = planned.cluster
    try:
        actions = systemd_unit.install(inventory, planned, dry_run=dry_run, unit_dir=unit_dir, conf_dir=conf_dir,
                                       enable=not no_enable)
    except DynamoLaunchError as e:
        _fail(str(e))
    if dry_run:
        click.echo("dry run: nothing is written or run")
    for a in actions:
        if a.outcome in ("planned", "done"):
            click.echo(a.describe())
        elif a.outcome == "skipped":
            click.echo(f"warning: not run ({a.detail}): {' '.join(a.argv)}", err=True)
        else:
            click.echo(f"error: {' '.join(a.argv)} failed: {a.detail}", err=True)
    if dry_run:
        for a in actions:
            if a.kind == "write" and not a.note:  # the env file may hold secrets: never shown
                click.echo(f"\n--- {a.path}\n{a.content}", nl=False)
        return
    unit = systemd_unit.instance(cluster)
    click.echo(f"start it: systemctl start {unit}; its log: journalctl -u {unit} -f")
    if any(a.outcome == "failed" for a in actions):
        sys.exit(1)


def _from_etcd(endpoints: str, cluster: str, tls_files: tuple[str | None, str | None, str | None]) -> dict:
    import asyncio

    from .etcd import TLS
    from .mirror import read_status

    # etcd with auth on (the launcher's own always is): the Dynamo user's credentials, as Dynamo reads them
    user, password = os.environ.get("ETCD_AUTH_USERNAME"), os.environ.get("ETCD_AUTH_PASSWORD")
    pems = []
    for path in tls_files:
        try:
            pems.append(None if not path else open(path, "rb").read())
        except OSError as e:
            _fail(f"cannot read {path}: {e.strerror or e}")
    try:
        snap = asyncio.run(read_status(endpoints, cluster, auth=(user, password) if user and password else None,
                                       tls=TLS(*pems)))
    except NotPublished as e:
        click.echo(clean(f"error: {e}"), err=True)
        sys.exit(3)
    except DynamoLaunchError as e:
        _fail(str(e))
    if not snap.get("mirror", {}).get("daemon_alive", True):
        click.echo("warning: the daemon's lease in etcd has expired: this is its last published status", err=True)
    return snap


def _ask(cluster: str | None, op: str, timeout: float = 30.0, **args) -> dict:
    """One request to the running daemon; exit 3 when there is none, 1 on other errors."""
    try:
        return control.request(control.find_socket(cluster), op, timeout=timeout, **args)
    except NoDaemon as e:
        click.echo(clean(f"error: {e}"), err=True)
        sys.exit(3)
    except DynamoLaunchError as e:
        _fail(str(e))


def _activate_own_environment() -> None:
    """Put this interpreter's directory first on PATH, as activating its venv would.

    On a ``local = true`` head the daemon starts the node agent, and through it every process,
    with the inventory's ``python`` (``python3`` unless set) and binaries such as ``nats-server``:
    they then resolve to the environment dynamo-launch runs from, even when it was started as
    ``.venv/bin/dynamo-launch`` (or by systemd) without activating anything. SSH hosts are not
    affected: their PATH is their own.
    """
    own = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if own and own not in path.split(os.pathsep):
        os.environ["PATH"] = own + (os.pathsep + path if path else "")


_json_logs = False  # set by _configure_logs: then even what the CLI reports is a JSON log line


def _live_block() -> Any:
    """stderr with `up`'s progress block at its bottom, when stderr is a terminal that can redraw."""
    from .console import LiveBlock, can_redraw

    return LiveBlock(sys.stderr) if can_redraw(sys.stderr) else None


def _show_rows(block: Any) -> Callable[[Any], None]:
    """What draws the processes not ready yet into ``block``, at the terminal's size of the moment:
    a callback for :meth:`Daemon.serve`'s ``live`` (a Progress to draw from, or None)."""
    from .progress import render

    def show(progress: Any) -> None:
        block.source = None if progress is None else lambda: render(progress.rows(), progress.total(), *block.size())
        block.refresh()

    return show


def _configure_logs(json_output: bool | None, level: str | None, verbose: bool, quiet: bool,
                    stream: Any = None) -> None:
    from . import logs

    global _json_logs
    if verbose and quiet:
        _fail("-v and -q say opposite things: give one")
    level = level or ("debug" if verbose else "warning" if quiet else "info")
    # Asked for by name (as the systemd unit does): then the CLI's own reports are log lines too.
    # `auto` keeps them plain text for whoever runs the command in a pipe.
    _json_logs = json_output is True
    logs.configure(json_output=json_output, level=level, stream=stream)


def _log() -> Any:
    import structlog

    return structlog.get_logger("dynamo_launch.cli")


def _show_checks(checks: list[Check]) -> None:
    if _json_logs:  # one event per check: `jq 'select(.event == "preflight")'`
        for c in checks:
            {"fail": _log().error, "warn": _log().warning}.get(c.status, _log().info)(
                "preflight", host=c.host, check=c.name, result=c.status.upper(), detail=c.detail)
        return
    rows = [("HOST", "CHECK", "RESULT", "DETAIL")]
    rows += [(clean(c.host), clean(c.name), clean(c.status.upper()), clean(c.detail)) for c in checks]  # from nodes
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    click.echo("preflight:", err=True)
    for r in rows:
        click.echo("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3], err=True)


def _report_stop(stopped: list[str], unknown: list[str], leftovers: dict) -> None:
    from .plan.render import count

    if _json_logs:
        (_log().warning if unknown or leftovers else _log().info)(
            "stopped", processes=len(stopped), unknown=unknown, leftovers=leftovers)
        return
    click.echo(f"stopped {count(len(stopped), 'process')}", err=True)
    if unknown:
        click.echo(clean(f"could not verify (host unreachable): {', '.join(map(str, unknown))}; run `down` again once "
                         f"it answers"), err=True)
    for host, pids in leftovers.items():
        click.echo(clean(f"{host}: still running after stop: pids {', '.join(map(str, pids))}"), err=True)


def _fail(message: str):
    if _json_logs:
        _log().error(message)
        sys.exit(1)
    click.echo(clean(f"error: {message}"), err=True)  # messages carry what nodes, etcd and NATS said
    sys.exit(1)


def _lines(text: str) -> str:
    """Multi-line text from the daemon, each line cleaned of control characters."""
    lines = text.split("\n")  # not splitlines(): a forged \x1c or \u2028 is shown, not obeyed
    if lines[-1] == "":
        lines.pop()
    return "".join(clean(line) + "\n" for line in lines)


if __name__ == "__main__":  # pragma: no cover
    main()
