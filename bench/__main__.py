"""`python -m bench SCENARIO|all [options]`: run benchmarks, print a table, write JSON and plots to bench/results/.

Every scenario but raw runs against the edge and then against the grpc.aio + aiokafka stack (bench.aio_edge)
in the same run; each row shows edge / raw stack and edge / grpc.aio (--no-aio: the edge only).

examples:
  python -m bench all                                  # every scenario but soak at full scale (~30 min)
  python -m bench all --small                          # the same at validation scale (~6 min)
  python -m bench capacity --peers 1000,5000,10000
  python -m bench events --rates 2000,5000,0 --profile py-spy
  python -m bench events,commands,disconnect    # several scenarios, one broker, raw limits shared
  python -m bench abuse --duration 20 --abuse-after 60  # issue 11's attacks beside 20 good peers (~15 min)
  python -m bench abuse --duration 5 --abuse-after 10 --vectors rapid_reset,ping_flood
  python -m bench soak --duration 1800 --warmup 300    # churn for 30 min, figures after 5 min
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
from pathlib import Path

import attrs
import trio
import trio_asyncio

from bench import endings, machine, scenarios, soak
from bench.abuse import AbuseParams, abuse
from bench.attackers import VECTORS
from bench.compare import compared
from bench.plots import write_plots
from bench.kafka import BenchKafka
from bench.report import Figure, table, write_json
from bench.runner import Bench, bench_bootstrap, raise_fd_limit
from bench.scenarios import SMALL, Params
from edge.certs import write_dev_certificates

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("raw", "capacity", "events", "commands", "disconnect", "shutdown", "soak")
#: What `all` runs: every scenario but the soak, which is long (run it by name).
ALL = ORDER[:-1]
#: Scenarios run only when named (not part of `all`), measured on the edge alone.
NAMED_ONLY = ("abuse",)
SCENARIOS = {**scenarios.SCENARIOS, "disconnect": endings.disconnect, "shutdown": endings.shutdown, "soak": soak.soak}


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _scenarios(text: str) -> str:
    names = text.split(",")
    if text != "all" and not all(name in ORDER + NAMED_ONLY for name in names):
        raise argparse.ArgumentTypeError(
            f"not a scenario: {text!r} (choose from {', '.join(ORDER + NAMED_ONLY)} or all)")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", type=_scenarios,
                        help=f"one of {', '.join(ORDER)}, several joined by commas, or all")
    parser.add_argument("--small", action="store_true", help="validation scale: small counts, short steps")
    parser.add_argument("--peers", type=_numbers, help="capacity steps, e.g. 1000,5000,10000")
    parser.add_argument("--heartbeat", type=int, help="HEARTBEAT_INTERVAL_SEC of the edges and the peers (default 10)")
    parser.add_argument("--rates", type=_numbers, help="event rates per second, 0 = as fast as possible")
    parser.add_argument("--duration", type=float,
                        help="seconds per measured step; soak: its whole length (default 1800)")
    parser.add_argument("--warmup", type=float, help="soak: seconds of churn before its figures count (default 300)")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument("--edge-cpus", help="cores for the edge, e.g. 0 (default: the first core)")
    parser.add_argument("--load-cpus", help="cores for everything else (default: the other cores)")
    parser.add_argument("--load-procs", type=int, help="load generator processes (default: one per load core)")
    parser.add_argument("--profile", choices=("py-spy", "pyinstrument"), help="profile every edge; saved to the results")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-limit measurements (no ratios)")
    parser.add_argument("--abuse-after", type=float, help="abuse: seconds of quiet after each attack before RSS (60)")
    parser.add_argument("--vectors", help=f"abuse: attacks to run, joined by commas (default all: {', '.join(VECTORS)})")
    parser.add_argument("--no-aio", action="store_true", help="skip the grpc.aio + aiokafka stack (no edge/aio ratios)")
    return parser.parse_args(argv)


def params_from(args: argparse.Namespace) -> Params:
    p = SMALL if args.small else Params()
    if args.peers:
        p = attrs.evolve(p, capacity_peers=tuple(int(n) for n in args.peers))
    if args.rates:
        p = attrs.evolve(p, event_rates=args.rates)
    if args.heartbeat:
        p = attrs.evolve(p, heartbeat_sec=args.heartbeat)
    if args.duration:
        p = attrs.evolve(p, step_sec=args.duration, half_rate_sec=args.duration, soak_sec=args.duration)
    if args.warmup is not None:
        p = attrs.evolve(p, soak_warmup_sec=args.warmup)
    return p


def abuse_params(args: argparse.Namespace) -> AbuseParams:
    ap = AbuseParams()
    if args.duration:
        ap = attrs.evolve(ap, vector_sec=args.duration)
    if args.abuse_after is not None:
        ap = attrs.evolve(ap, after_sec=args.abuse_after)
    if args.vectors:
        unknown = set(args.vectors.split(",")) - set(VECTORS)
        if unknown:
            raise SystemExit(f"--vectors: unknown {sorted(unknown)}; choose from {', '.join(VECTORS)}")
        ap = attrs.evolve(ap, vectors=tuple(args.vectors.split(",")))
    return ap


async def run(args: argparse.Namespace, params: Params, cpus: machine.CpuPlan, out: Path, bootstrap: str,
              broker_pid: int | None) -> dict[str, dict]:
    names = ALL if args.scenario == "all" else tuple(n for n in ORDER + NAMED_ONLY if n in args.scenario.split(","))
    if args.no_raw:
        names = tuple(n for n in names if n != "raw")
    results: dict[str, dict] = {}
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        bench = Bench(nursery, BenchKafka(bootstrap), out / "certs", cpus, out, args.load_procs or len(cpus.load),
                      args.profile, broker_pid)
        if args.no_raw:
            bench.raw.update(_no_raw())
        for name in names:
            print(f"== {name}", file=sys.stderr)
            began = time.monotonic()
            try:
                if name == "abuse":
                    results[name] = await abuse(bench, params, abuse_params(args))
                else:
                    results[name] = await compared(SCENARIOS[name], bench, params,
                                                   with_aio=name != "raw" and not args.no_aio)
            except Exception as error:  # noqa: BLE001 - one failed scenario must not lose the others' results
                results[name] = {"error": f"{type(error).__name__}: {error}", "figures": [
                    Figure(f"{name}: FAILED", None, "", note=f"{type(error).__name__}: {error}"[:120])]}
                print(f"  {name} failed: {error!r}", file=sys.stderr)
            results[name]["seconds"] = round(time.monotonic() - began, 1)
            results[name]["load_average"] = [round(x, 2) for x in os.getloadavg()]
        nursery.cancel_scope.cancel()
    return results


def _no_raw() -> dict[str, dict]:
    nothing = {"rate": float("nan"), "cpu_per_msg": 0.0, "cpu_per_record": 0.0,
               "latency_ms": {"p50": float("nan"), "p99": float("nan")}}
    return {"capacity": [], "grpc_sink": nothing, "grpc_source": nothing,
            **{f"kafka_{m}_{loop}": nothing for m in ("produce", "consume") for loop in ("asyncio", "trio")}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        print("python -m bench writes plots with matplotlib: pip install -c constraints.txt -e '.[test,bench]'",
              file=sys.stderr)
        return 2
    params = params_from(args)
    cpus = machine.CpuPlan.parse(args.edge_cpus, args.load_cpus)
    machine.pin(cpus.load)  # the broker, load generators and profilers inherit this
    fd_limit = raise_fd_limit()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{stamp}-{args.scenario.replace(',', '+')}{'-small' if args.small else ''}"
    out.mkdir(parents=True)
    write_dev_certificates(out / "certs")
    info = machine.machine_info()
    with bench_bootstrap(args.bootstrap) as (bootstrap, broker_pid):
        results = trio.run(run, args, params, cpus, out, bootstrap, broker_pid)
    figures = [f for name in results for f in results[name]["figures"]]
    document = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "started": stamp,
        "scale": "small (validation)" if args.small else "full",
        "machine": info,
        "cores": {**cpus.describe(), "load_procs": args.load_procs or len(cpus.load),
                  "note": "edge (and bare servers) pinned to 'edge'; broker, load generators, orchestrator to 'load'"},
        "open_files_limit": fd_limit,
        "params": attrs.asdict(params),
        "figures": figures,
        "scenarios": results,
    }
    write_json(out / "results.json", document)
    plots = write_plots(results, out, params.soak_warmup_sec)
    print(table(figures))
    print(f"\ncores: edge {sorted(cpus.edge)}, load {sorted(cpus.load)}; load average now "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; results in {out}")
    print(f"plots: {', '.join(p.name for p in plots) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
