"""Benchmarks of the edge against the raw limits of its own stack and against the stack a user would
pick instead (`python -m bench --help`).

    __main__.py   the command line: broker, certificates, cores; runs scenarios; table and JSON
    scenarios.py  capacity, events, commands, and the raw limits they compare to
    endings.py    disconnect and shutdown
    soak.py       the churn soak: rounds of peers arriving, working and leaving; RSS and open files
    compare.py    each scenario against the edge, then against the grpc.aio stack; rows merged
    aio_edge.py   the grpc.aio + aiokafka edge of the same contract path, on plain asyncio
    runner.py     what scenarios share: the broker, topics, edges and load-generator processes
    edgeproc.py   the edge under test (`python -m edge run`), pinned, optionally profiled
    loadgen.py    a load-generator process: thousands of peers, driven over stdin/stdout
    wire.py       one lean peer: TLS + h2 + one Connect stream in one Trio task
    raw_grpc.py   purerpc's own server with the same TLS and service, no edge logic
    raw_kafka.py  aiokafka alone, under asyncio or trio-asyncio
    kafka.py      the orchestrator's Kafka: LogAppendTime topics, reading back, producing commands
    control.py    JSON lines between the orchestrator and its helper processes
    machine.py    machine description, core pinning, CPU and RSS from /proc
    stats.py      percentiles, steady-state rates, the composed stack limit (pure)
    report.py     figures, the table, JSON
    plots.py      latency CDFs, capacity curve, soak over time (PNG, matplotlib)

Method and figures: docs/performance.md.
"""
