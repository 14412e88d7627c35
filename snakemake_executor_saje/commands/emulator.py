"""`saje emulator start|run`: the local Azure Batch emulator as a command.

    saje emulator start [--port N] [--data-dir DIR] [--nodes N] [--with-azurite] [--time-scale N] ...
        Run a local Batch account in the foreground until Ctrl-C / SIGTERM. Its clock runs
        --time-scale times faster than real time (default 60), so Azure's own durations
        (5-minute autoscale interval, node boot) keep a local run quick.
    saje emulator run [options] -- COMMAND...
        Start the emulator (with Azurite), run COMMAND with the environment pointing at it,
        stop everything afterwards; exit with COMMAND's exit code.
    saje emulator status|stop [--data-dir DIR]
        Whether an emulator started with `start` on DIR is running (exit 0, or 3 when none is);
        stop it (SIGTERM, as Ctrl-C would) and wait until it has stopped.

An emulator writes DIR/emulator.json (pid and start time, endpoint, account name; never the key)
while it runs; `status` and `stop` read it and check that the pid is still that process (same
start time) before anything else. `start` runs with umask 077: what it creates is private.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import json
import time

from .common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, Context

STATE_FILE = "emulator.json"
DEFAULT_DATA_DIR = Path(".saje") / "emulator"
# The local profiles keep Azure's values (a 5-minute autoscale interval); at 60x that interval
# passes in 5 s and a node boots in about 2 s, which keeps a local run as quick as a real one is slow.
DEFAULT_TIME_SCALE = 60.0


def _emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="state, node directories and blobs live here (default: .saje/emulator)")
    parser.add_argument("--account-name", default="sajelocal", help="Batch account name")
    parser.add_argument("--nodes", type=int, default=None,
                        help="create a pool 'local' with this many nodes at start (optional)")
    parser.add_argument("--vm-size", type=Path, default=None, dest="vm_size_catalogue",
                        help="YAML catalogue of VM sizes to use instead of the bundled one")
    parser.add_argument("--with-azurite", action="store_true", help="also start Azurite (blob storage)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a generated certificate (bearer tokens)")
    parser.add_argument("--time-scale", type=_positive, default=DEFAULT_TIME_SCALE, metavar="N",
                        help="run the service's clock N times faster than real time: Azure's 5-minute autoscale "
                             "interval, node boot and resize timeouts pass N times faster; task processes run in "
                             f"real time (default {DEFAULT_TIME_SCALE:g}; 1: Azure's own pace)")
    parser.add_argument("--node-boot-seconds", type=float, default=None,
                        help="service seconds a node spends in 'creating' and in 'starting' (default 60)")
    parser.add_argument("--core-quota", action="append", default=[], type=_core_quota, metavar="NAME=CORES",
                        help="an account core quota: dedicated (default 900), lowpriority (default 100) or a VM "
                             "series, e.g. standardHBv3Family=480 (default: the dedicated total); repeatable")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _core_quota(text: str) -> tuple[str, int]:
    from ..emulator.quotas import parse_setting

    try:
        return parse_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quota_settings(pairs: list[tuple[str, int]]) -> dict:
    """--core-quota NAME=CORES pairs as EmulatorConfig fields."""
    settings: dict = {}
    families: dict[str, int] = {}
    for name, cores in pairs:
        key = {"dedicated": "dedicated_core_quota", "lowpriority": "low_priority_core_quota",
               "spot": "low_priority_core_quota"}.get(name.lower())
        if key:
            settings[key] = cores
        else:
            families[name] = cores
    if families:
        settings["vm_family_core_quotas"] = families
    return settings


def _make_emulator(args: argparse.Namespace, with_azurite: bool):
    from ..emulator import Emulator

    from .. import statedir

    data_dir = statedir.ensure(args.data_dir or DEFAULT_DATA_DIR)
    optional = {"node_boot_seconds": args.node_boot_seconds} if args.node_boot_seconds is not None else {}
    optional.update(quota_settings(args.core_quota))
    return Emulator(
        data_dir, with_azurite=with_azurite, host=args.host, port=args.port, account_name=args.account_name,
        tls=args.tls, vm_size_catalogue=args.vm_size_catalogue, time_scale=args.time_scale, **optional,
    )


def client_environment(emulator) -> dict[str, str]:
    """What a client (snakemake, the SDKs) needs to use this emulator."""
    env = {
        "SNAKEMAKE_SAJE_ACCOUNT_URL": emulator.endpoint,
        "SNAKEMAKE_SAJE_ACCOUNT_NAME": emulator.account_name,
        "SNAKEMAKE_SAJE_ACCOUNT_KEY": emulator.account_key,
    }
    if emulator.azurite is not None:
        env["AZURE_STORAGE_CONNECTION_STRING"] = emulator.azurite.connection_string
        env["AZURITE_CONNECTION_STRING"] = emulator.azurite.connection_string
    if emulator.config.ca_bundle:  # --tls: the SDKs trust the emulator's certificate (and the machine's CAs)
        env["REQUESTS_CA_BUNDLE"] = env["SSL_CERT_FILE"] = str(emulator.config.ca_bundle)
    if emulator.cert_path is not None:  # --tls: managed-identity tokens come from the emulator
        env.update(emulator.identity_environment())
    return env


def _create_fixed_pool(emulator, nodes: int) -> None:
    from azure.batch import models
    from azure.core.exceptions import ResourceExistsError

    try:
        emulator.client().create_pool(models.BatchPoolCreateOptions(
            id="local", vm_size="Standard_D2s_v5", target_dedicated_nodes=nodes, task_slots_per_node=2,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts",
                                                             sku="server"),
                node_agent_sku_id="batch.node.ubuntu 24.04"),
        ))
    except ResourceExistsError:
        pass  # a restart on the same data dir: the pool is still there


def emulator_start(args: argparse.Namespace) -> int:
    from ..emulator.datadir import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)  # this process is the emulator: everything it writes is its own
    emulator = _make_emulator(args, args.with_azurite)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        emulator.start()
    except Exception as exc:  # a data dir in use, a remembered port taken, Azurite missing
        print(f"saje emulator start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:  # what a dead emulator left and this one stopped was logged by start()
        if args.nodes:
            _create_fixed_pool(emulator, args.nodes)
        print(f"Azure Batch emulator listening on {emulator.endpoint}")
        print(f"  account name: {emulator.account_name}")
        print(f"  time scale:   {emulator.config.time_scale:g}x (service time runs this much faster; tasks run in real time)")
        print(f"  account key:  {emulator.account_key}")
        if emulator.azurite is not None:
            print(f"  Azurite blob: {emulator.azurite.blob_endpoint}")
            print(f"  storage connection string: {emulator.azurite.connection_string}")
        print("Environment for clients:")
        for key, value in client_environment(emulator).items():
            print(f"  export {key}='{value}'")
        print("Ctrl-C (or saje emulator stop) stops it and every task process it started.", flush=True)
        stop.wait()
    finally:
        emulator.stop()
    print("emulator stopped")
    return 0


def _is_emulator_process(state: dict) -> bool:
    """The record's process is alive and is still that process (not a reused pid)."""
    from ..emulator.processes import ProcessId

    process = ProcessId.from_dict(state)
    return process is not None and process.alive()


def running_emulator(data_dir: Path | None) -> dict | None:
    """The state of the emulator started on ``data_dir``, or None when none runs there."""
    path = Path(data_dir or DEFAULT_DATA_DIR) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not _is_emulator_process(state):
        return None
    return state


def no_endpoint_hint(data_dir: Path | None = None) -> str:
    """What a `saje` command with no Batch endpoint tells emulator users to do."""
    state = running_emulator(data_dir)
    if state is not None:
        return (f"An emulator is running here (pid {state['pid']}, started with saje emulator start) at"
                f" {state['endpoint']}: point saje at it with the export lines it printed"
                f" (SNAKEMAKE_SAJE_ACCOUNT_URL={state['endpoint']}, SNAKEMAKE_SAJE_ACCOUNT_NAME={state['accountName']}"
                " and SNAKEMAKE_SAJE_ACCOUNT_KEY).")
    return ("For the local emulator: start it in another terminal with `saje emulator start` and paste the"
            " export lines it prints here, or run a command inside a fresh one: `saje emulator run -- saje status`.")


def emulator_status(ctx: Context) -> int:
    state = running_emulator(ctx.args.data_dir)
    if state is None:
        raise CliError(f"No emulator is running on {ctx.args.data_dir or DEFAULT_DATA_DIR}"
                       " (start one with: saje emulator start).", EXIT_NOT_FOUND, "EmulatorNotRunning")
    ctx.out.emit({"running": True, **state})
    ctx.out.print(f"Emulator running (pid {state['pid']}) at {state['endpoint']}, account {state['accountName']}")
    if state.get("azuriteBlobEndpoint"):
        ctx.out.print(f"  Azurite blob: {state['azuriteBlobEndpoint']}")
    ctx.out.print(f"  data: {state['dataDir']}")
    if state.get("timeScale"):
        ctx.out.print(f"  time scale: {state['timeScale']:g}x")
    return EXIT_OK


def emulator_stop(ctx: Context) -> int:
    state = running_emulator(ctx.args.data_dir)
    if state is None:
        raise CliError(f"No emulator is running on {ctx.args.data_dir or DEFAULT_DATA_DIR}.",
                       EXIT_NOT_FOUND, "EmulatorNotRunning")
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ctx.args.timeout
    while _is_emulator_process(state):
        if time.monotonic() >= deadline:
            raise CliError(f"The emulator (pid {pid}) did not stop within {ctx.args.timeout:g} s.",
                           EXIT_FAILED, "Timeout")
        time.sleep(0.1)
    ctx.out.info(f"Emulator (pid {pid}) stopped.")
    ctx.out.emit({"stopped": pid})
    return EXIT_OK


def emulator_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("saje emulator run: give the command to run after --, e.g. saje emulator run -- snakemake ...", file=sys.stderr)
        return EXIT_USAGE
    with _make_emulator(args, with_azurite=not args.no_azurite) as emulator:
        env = {**os.environ, **client_environment(emulator)}
        proc = subprocess.Popen(command, env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()


def register(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """`start` and `run` take no global options (they run the account, they do not call it) and
    get the parsed arguments (``raw = True``); `status` and `stop` are ordinary commands."""
    emulator = commands.add_parser("emulator", help="the local Azure Batch emulator")
    actions = emulator.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="run the emulator in the foreground")
    _emulator_arguments(start)
    start.set_defaults(func=emulator_start, raw=True)
    run = actions.add_parser("run", help="run a command against a fresh emulator, then stop it")
    _emulator_arguments(run)
    run.add_argument("--no-azurite", action="store_true", help="do not start Azurite")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    run.set_defaults(func=emulator_run, raw=True)
    for name, func, text in (("status", emulator_status, "is an emulator running on --data-dir? (exit 3: no)"),
                             ("stop", emulator_stop, "stop the emulator running on --data-dir")):
        p = actions.add_parser(name, parents=parents, help=text)
        p.add_argument("--data-dir", type=Path, default=None, help="its data directory (default: .saje/emulator)")
        if name == "stop":
            p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="wait this long at most")
        p.set_defaults(func=func)
