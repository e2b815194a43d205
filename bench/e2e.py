"""`e2e`: complete e-mail processes per second through the PM and all five step consumers.

Every component is its own OS process, started as a user would (`python -m pm run pm`,
`pm run consumer STEP [STEP...] --concurrency 8`: the four light steps on one consumer, send-email
on its own, see WORKER_LAYOUTS; `pm run service order-service`, `pm run service smtp-sink`),
on a fresh local broker. The LLM steps use the offline provider with an artificial
latency per call (`--llm-latency-ms`, 0 and 50 ms). 80 % of the e-mails ask where
their order is (answered without a human), 20 % ask for a refund (approval required):
a scripted reviewer in this process tails `approvals.requested` and publishes a signed
approval (`pm.approvals.build_decision`) as soon as a request appears.

One warm-up e-mail runs end to end first (every consumer has joined its group). Then
N e-mails are published and the journal is tailed until every process is terminal.

- processes/s = N / (last terminal journal record - first publish)
- per process latency = terminal journal record time - the e-mail's `occurred_at`
- per decision latency = journal record time - the input event's `occurred_at`
  (input produced -> consumed, decided, journaled and committed by the PM)
- CPU ms per e-mail = (utime + stime of each OS process, from /proc/<pid>/stat: `bench.cpu`,
  taken right before the N e-mails are published and right after the last is terminal) / N,
  per component: the broker, the PM, each step consumer (the pm deployment, summed as `total`),
  the two dev services standing in for external systems (order-service, smtp-sink), and this
  process (publisher, scripted reviewer, journal tail: the load generator, not pm).

Before the N e-mails (first size only), 5 s with nothing in flight give the idle cluster's CPU
ms per second (`idle`), then `serial` e-mails (30 in `run`) go one at a time, the next published when
the previous is terminal: ingest -> terminal p50/p99 without load (the e-mail's `occurred_at`, set
just before it is published, to the journal record that makes it terminal), and their CPU per
e-mail (includes the idle polling of every component between e-mails). `run` also measures the
raw pipe (`bench.pipe.measure_pipe`) on the same broker first, with its CPU per record: broker,
and this process (preloading producer + consume -> transactional produce loop).

Sizes: N = 2,000 and 20,000 (quick: 200), each at 0 ms and 50 ms LLM latency.
On this 2-core machine the pipeline runs at ~45-55 processes/s (2,000: ~1 minute per latency,
all sent) and ~37-49/s at 20,000 (~7-9 minutes per latency; that burst escalates about a third
on step timers, see RESULTS.md), limited by the cores the broker, the PM
and the consumers share, not by the LLM latency (see RESULTS.md; before the step consumers'
flow-control fix it was ~8/s). `run(False, sizes=(20_000,))` runs only the 20,000 size.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, TopicPartition

from bench.cluster import percentile
from bench.common import Result, bench_broker, bench_broker_pid, report
from bench.cpu import CpuMeter, CpuSnapshot
from bench.pipe import measure_pipe
from bench.scenario import Scenario
from customer_email.publisher import EmailPublisher
from pm.approvals import build_decision, ensure_local_key, signing_key
from pm.broker import free_port
from pm.codec import CodecError, decode, encode
from pm.config import Config
from pm.events import ApprovalRequested
from pm.harness import Child, JournalTail, child_env, pm_argv
from pm.kafka import make_consumer, make_producer
from pm.topics import load_layout

__all__ = ["run", "measure_e2e", "E2eResult", "SerialResult", "ScriptedReviewer", "cluster_meter"]

STEPS = ("classify", "fetch-order", "fetch-refund-policy", "draft-reply", "send-email")
# How the steps run: name -> the steps of one step consumer (one OS process, one Kafka consumer).
# "two" (default): the four light steps share one, send-email (SMTP, the heaviest) has its own;
# "each": one per step (as before session 7). PM_BENCH_E2E_WORKERS picks one for `pm bench e2e`.
WORKER_LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "two": {"steps": STEPS[:4], "send-email": ("send-email",)},
    "each": {step: (step,) for step in STEPS},
}
WORKERS = os.environ.get("PM_BENCH_E2E_WORKERS", "two")
REVIEWER = "bench-reviewer"
TERMINAL = frozenset({"sent", "escalated", "failed", "rejected"})
CONCURRENCY = 8
SERIAL = 30  # e-mails one at a time (unloaded latency) before the N of each run's first size
IDLE = 5.0  # seconds of an idle cluster (CPU per second) before those
BROKER, LOAD = "broker", "bench process"
PM_PARTS = (BROKER, "pm", *dict.fromkeys(n for layout in WORKER_LAYOUTS.values() for n in layout))  # `total`
SERVICES = ("order-service", "smtp-sink")  # dev stand-ins for external systems


class ScriptedReviewer(threading.Thread):
    """Approves every approval request as soon as it shows up on `approvals.requested`."""

    def __init__(self, config: Config) -> None:
        super().__init__(name="bench-reviewer", daemon=True)
        self.config = config
        self.stop = threading.Event()
        self.approved = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the benchmark
            self.error = exc

    def _run(self) -> None:
        key_id, secret = signing_key(self.config)
        topic = self.config.topic("approvals.requested")
        partitions = load_layout().spec("approvals.requested").partitions
        consumer = make_consumer(self.config, "bench-reviewer", f"{self.config.topic_prefix}bench-reviewer")
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        producer = make_producer(self.config, "bench-reviewer")
        seen: set[str] = set()
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(500, timeout=0.05):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(error)
                        continue
                    try:
                        request = decode(msg.value() or b"")
                    except CodecError:
                        continue
                    if not isinstance(request, ApprovalRequested) or request.payload.approval_id in seen:
                        continue
                    seen.add(request.payload.approval_id)
                    decision = build_decision(
                        correlation_id=request.correlation_id,
                        approval_id=request.payload.approval_id,
                        decision="approve",
                        reviewer=REVIEWER,
                        draft_hash=request.payload.draft_hash,
                        policy_version=request.payload.policy_version,
                        key_id=key_id,
                        secret=secret,
                        causation_id=request.event_id,
                    )
                    producer.produce(
                        self.config.topic("approvals"),
                        key=decision.correlation_id.encode(),
                        value=encode(decision),
                    )
                    self.approved += 1
                producer.poll(0)
        finally:
            producer.flush(10)
            consumer.close()


@dataclass(frozen=True)
class E2eResult:
    processes: int
    latency_ms: int
    seconds: float
    statuses: dict[str, int]
    approvals: int
    decisions: int
    decision_p50: float
    decision_p99: float
    process_p50: float
    process_p99: float
    # input type -> (p50 ms from the previous journal record of the process to this input's occurred_at
    # (command delivered, step ran, result produced), p50 ms from occurred_at to this journal record)
    stages: dict[str, tuple[float, float]]
    extra_statuses: dict[str, str] = field(default_factory=dict)  # see measure_e2e(extra=...)
    prefix: str = ""  # the run's topic prefix (its topics stay on the broker until it stops)
    cpu: CpuSnapshot | None = None  # CPU seconds per component over the N e-mails (None: no /proc)
    serial: SerialResult | None = None  # see measure_e2e(serial=...)
    # CPU seconds per component with nothing in flight (measure_e2e(idle=...))
    idle: CpuSnapshot | None = None

    @property
    def rate(self) -> float:
        return self.processes / self.seconds if self.seconds > 0 else 0.0

    def cpu_ms(self) -> dict[str, float]:
        return cpu_ms_per(self.cpu, self.processes)


@dataclass(frozen=True)
class SerialResult:
    """E-mails published one at a time, each after the previous one was terminal."""

    processes: int
    statuses: dict[str, int]
    p50: float  # ms, the e-mail's occurred_at -> its terminal journal record
    p99: float
    kinds_p50: dict[str, float]  # "status" / "refund" (approved by the scripted reviewer) -> p50 ms
    cpu: CpuSnapshot | None

    def cpu_ms(self) -> dict[str, float]:
        return cpu_ms_per(self.cpu, self.processes)


def cpu_ms_per(cpu: CpuSnapshot | None, count: int) -> dict[str, float]:
    """CPU ms per unit of work by component, plus `total` (the pm deployment: broker, PM, steps)."""
    if cpu is None or count <= 0:
        return {}
    per = {name: 1000 * seconds / count for name, seconds in cpu.seconds.items()}
    per["total"] = sum(per.get(name, 0.0) for name in PM_PARTS)
    return per


def _start_cluster(
    config: Config, work: Path, llm_latency_ms: int, workers: str = WORKERS
) -> tuple[list[Child], dict[str, str]]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(config, PM_REVIEWERS=REVIEWER)
    latency = ["--llm-latency-ms", str(llm_latency_ms)]
    children = [
        Child("order-service", pm_argv("run", "service", "order-service"), logs / "order.log"),
        Child(
            "smtp-sink",
            pm_argv("run", "service", "smtp-sink", "--maildir", str(work / "maildir")),
            logs / "smtp.log",
        ),
        Child("pm", pm_argv("run", "pm"), logs / "pm.log"),
        *(
            Child(
                name,
                pm_argv(
                    "run",
                    "consumer",
                    *steps,
                    "--concurrency",
                    str(CONCURRENCY),
                    *(latency if {"classify", "draft-reply"} & set(steps) else []),
                ),
                logs / f"{name}.log",
            )
            for name, steps in WORKER_LAYOUTS[workers].items()
        ),
    ]
    for child in children:
        child.start(env)
    return children, env


def measure_e2e(
    base: Config,
    processes: int,
    llm_latency_ms: int,
    *,
    timeout: float = 1800.0,
    extra: Callable[[Config, Scenario], list[str]] | None = None,
    serial: int = 0,
    idle: float = 0.0,
    workers: str = WORKERS,
) -> E2eResult:
    """One run on the broker of `base` with fresh topics under a new prefix and a fresh state dir.

    `extra` publishes unusual records halfway through the e-mails and returns their correlation IDs:
    their last journaled status is reported in `extra_statuses` (absent: never journaled, e.g. DLQ).
    `serial` e-mails go one at a time after the warm-up, before the N (`E2eResult.serial`).
    Before them, `idle` seconds with nothing in flight measure what the idle cluster burns
    (`E2eResult.idle`).
    """
    work = Path(tempfile.mkdtemp(prefix="pm-bench-e2e-"))
    config = base.with_overrides(
        topic_prefix=f"e{uuid.uuid4().hex[:8]}.", state_dir=work / "state"
    ).with_settings(order_service_url=f"http://127.0.0.1:{free_port()}", smtp_port=free_port())
    from pm.topics import apply_topics

    apply_topics(config)
    ensure_local_key(config)
    children, _env = _start_cluster(config, work, llm_latency_ms, workers)
    reviewer = ScriptedReviewer(config)
    reviewer.start()
    # The load generator's own journal tail waits 500 ms per idle fetch: its idle fetches would cost the
    # broker (counted in pm's total) and latencies come from record timestamps, not from when it reads.
    tail = JournalTail(config.with_overrides(fetch_wait_max_ms=500), "bench-e2e-watch")
    publisher = EmailPublisher(config)
    scenario = Scenario(config, uuid.uuid4().hex[:6])
    status: dict[str, str] = {}
    try:
        # Warm-up: one refund e-mail end to end (every consumer and the reviewer on the way).
        warm = scenario.email(-1, "refund")
        publisher.publish(
            {**warm.payload.model_dump(), "received_at": None},
        )
        deadline = time.monotonic() + 120
        while status.get(warm.correlation_id) not in TERMINAL:
            _check(children, reviewer, deadline, "the warm-up e-mail")
            for row in tail.poll(0.2):
                status[row.correlation_id] = row.status
        if status[warm.correlation_id] != "sent":
            raise RuntimeError(f"warm-up e-mail ended {status[warm.correlation_id]}: {_tails(children)}")
        meter = cluster_meter(base, children)
        idle_cpu: CpuSnapshot | None = None
        if idle > 0:
            before = _snapshot(meter)
            end = time.monotonic() + idle
            while (left := end - time.monotonic()) > 0:
                _check(children, reviewer, end + 30, "the idle period")
                for row in tail.poll(min(0.2, left)):
                    status[row.correlation_id] = row.status
            after = _snapshot(meter)
            idle_cpu = None if before is None or after is None else after - before
        serial_deadline = time.monotonic() + 60 + 10 * serial
        serial_result = (
            _serial(
                scenario,
                publisher,
                tail,
                meter,
                serial,
                lambda what: _check(children, reviewer, serial_deadline, what),
            )
            if serial > 0
            else None
        )
        deadline = time.monotonic() + timeout

        cpu_before = _snapshot(meter)
        started_ms = time.time() * 1000
        wanted: set[str] = set()
        extra_ids: list[str] = []
        extra_statuses: dict[str, str] = {}
        for i in range(processes):
            if extra is not None and i == processes // 2:
                publisher.flush(120)
                extra_ids = extra(config, scenario)
                extra_statuses = dict.fromkeys(extra_ids, "not journaled")
            kind = "refund" if i % 5 == 4 else "status"
            email = scenario.email(i, kind)
            wanted.add(email.correlation_id)
            publisher.submit(email.payload, lambda _d: None)
        publisher.flush(120)

        decisions: list[float] = []
        last_written: dict[str, int] = {}
        stage_step: dict[str, list[float]] = {}
        stage_decide: dict[str, list[float]] = {}
        received_ms: dict[str, int] = {}
        finished_ms: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while len(finished_ms) < processes:
            _check(children, reviewer, deadline, f"{processes - len(finished_ms)} processes to finish")
            for row in tail.poll(0.2):
                if row.correlation_id in extra_ids:
                    extra_statuses[row.correlation_id] = row.status
                if row.correlation_id not in wanted:
                    continue
                status[row.correlation_id] = row.status
                decisions.append(row.written_ms - row.input_ms)
                stage_decide.setdefault(row.input_type, []).append(row.written_ms - row.input_ms)
                previous = last_written.get(row.correlation_id)
                if previous is not None:
                    stage_step.setdefault(row.input_type, []).append(row.input_ms - previous)
                last_written[row.correlation_id] = row.written_ms
                if row.input_type == "EmailReceived":
                    received_ms[row.correlation_id] = row.input_ms
                if row.status in TERMINAL and row.correlation_id not in finished_ms:
                    finished_ms[row.correlation_id] = row.written_ms
        cpu_after = _snapshot(meter)
        seconds = (max(finished_ms.values()) - started_ms) / 1000
        settle = time.monotonic() + 60  # the unusual records may still be on their way
        while extra_ids and time.monotonic() < settle:
            if all(status in TERMINAL or status == "not journaled" for status in extra_statuses.values()):
                break
            for row in tail.poll(0.2):
                if row.correlation_id in extra_ids:
                    extra_statuses[row.correlation_id] = row.status
        latencies = [finished_ms[c] - received_ms[c] for c in finished_ms if c in received_ms]
        counts: dict[str, int] = {}
        for cid in wanted:
            counts[status.get(cid, "?")] = counts.get(status.get(cid, "?"), 0) + 1
        return E2eResult(
            processes=processes,
            latency_ms=llm_latency_ms,
            seconds=seconds,
            statuses=counts,
            approvals=reviewer.approved,
            decisions=len(decisions),
            decision_p50=percentile(decisions, 50),
            decision_p99=percentile(decisions, 99),
            process_p50=percentile([float(v) for v in latencies], 50),
            process_p99=percentile([float(v) for v in latencies], 99),
            stages={
                t: (percentile(stage_step.get(t, []), 50), percentile(v, 50)) for t, v in stage_decide.items()
            },
            extra_statuses=extra_statuses,
            prefix=config.topic_prefix,
            cpu=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
            serial=serial_result,
            idle=idle_cpu,
        )
    finally:
        reviewer.stop.set()
        reviewer.join(15)
        tail.close()
        publisher.flush(10)
        for child in reversed(children):
            child.stop()
        if sys.exc_info()[0] is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"e2e: logs kept in {work / 'logs'}", file=sys.stderr)


def cluster_meter(base: Config, children: list[Child]) -> CpuMeter | None:
    """A CPU meter of the broker (when `bench_broker` started it), every child and this process."""
    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        return None  # no procfs (not Linux): no CPU figures
    broker = bench_broker_pid(base)
    groups: dict[str, list[int]] = {} if broker is None else {BROKER: [broker]}
    for child in children:
        groups.setdefault(child.name, []).append(child.pid)
    groups[LOAD] = [os.getpid()]
    return CpuMeter(groups, own_only=[LOAD])  # this process's descendants are the other groups


def _snapshot(meter: CpuMeter | None) -> CpuSnapshot | None:
    return None if meter is None else meter.snapshot()


def _serial(
    scenario: Scenario,
    publisher: EmailPublisher,
    tail: JournalTail,
    meter: CpuMeter | None,
    count: int,
    check: Callable[[str], None],
) -> SerialResult:
    """`count` e-mails one at a time (80 % status, 20 % refund), each published when the previous is terminal."""
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, int] = {}
    before = _snapshot(meter)
    for i in range(count):
        kind = "refund" if i % 5 == 4 else "status"
        email = scenario.email(100_000_000 + i, kind)  # apart from the N e-mails' indexes
        publisher.publish(email.payload)
        received_ms: int | None = None
        while True:
            check(f"one-in-flight e-mail {i + 1} of {count}")
            rows = [r for r in tail.poll(0.02) if r.correlation_id == email.correlation_id]
            for row in rows:
                if row.input_type == "EmailReceived":
                    received_ms = row.input_ms
            ended = [r for r in rows if r.status in TERMINAL]
            if ended:
                break
        statuses[ended[0].status] = statuses.get(ended[0].status, 0) + 1
        if received_ms is not None:
            latencies.setdefault(kind, []).append(float(ended[0].written_ms - received_ms))
    after = _snapshot(meter)
    every = [v for values in latencies.values() for v in values]
    return SerialResult(
        processes=count,
        statuses=statuses,
        p50=percentile(every, 50),
        p99=percentile(every, 99),
        kinds_p50={kind: percentile(values, 50) for kind, values in latencies.items()},
        cpu=None if before is None or after is None else after - before,
    )


def _check(children: list[Child], reviewer: ScriptedReviewer, deadline: float, what: str) -> None:
    dead = [c.name for c in children if not c.alive()]
    if dead:
        raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{_tails(children)}")
    if reviewer.error is not None:
        raise RuntimeError(f"the scripted reviewer failed: {reviewer.error!r}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"timed out waiting for {what}:\n{_tails(children)}")


def _tails(children: list[Child]) -> str:
    return "\n".join(f"--- {c.name}\n{c.tail(8)}" for c in children)


def pipe_baseline(config: Config, count: int) -> tuple[float, dict[str, float]]:
    """`bench.pipe` on this broker: msg/s, and CPU ms per record (broker; this process: preload + copy loop)."""
    broker = bench_broker_pid(config)
    meter = (
        CpuMeter({**({} if broker is None else {BROKER: [broker]}), LOAD: [os.getpid()]}, own_only=[LOAD])
        if os.path.exists(f"/proc/{os.getpid()}/stat")
        else None
    )
    before = _snapshot(meter)
    rate = measure_pipe(config, count)
    after = _snapshot(meter)
    if before is None or after is None:
        return rate, {}
    per = {name: 1000 * seconds / count for name, seconds in (after - before).seconds.items()}
    per["total"] = sum(per.values())
    return rate, per


def idle_ms_per_s(idle: CpuSnapshot | None) -> dict[str, float]:
    """CPU ms per second of wall time by component, plus `total` (broker, PM, steps)."""
    if idle is None or idle.wall <= 0:
        return {}
    return {name: ms / idle.wall for name, ms in cpu_ms_per(idle, 1).items()}


def _cpu_rows(columns: list[tuple[str, dict[str, float], float]]) -> list[tuple[str, str]]:
    """One row per component, one column per run: (label, CPU ms per e-mail by component, cores busy)."""
    columns = [c for c in columns if c[1]]
    if not columns:
        return [("CPU", "not measured (no /proc)")]
    width = max(12, *(len(label) for label, _, _ in columns))
    names = [*(n for n in PM_PARTS if n in columns[0][1]), "total", *SERVICES, LOAD]
    rows = [("CPU ms per e-mail", "  ".join(f"{label:>{width}}" for label, _, _ in columns))]
    for name in names:
        label = {
            "total": "  total (broker + pm + steps)",
            LOAD: f"  {LOAD} (load generator)",
        }.get(name, f"  {name}{' (dev service)' if name in SERVICES else ''}")
        rows.append((label, "  ".join(f"{per.get(name, float('nan')):>{width}.2f}" for _, per, _ in columns)))
    rows.append(
        ("  cores busy (all of the above)", "  ".join(f"{busy:>{width}.2f}" for _, _, busy in columns))
    )
    return rows


def _busy(cpu: CpuSnapshot | None) -> float:
    return sum(cpu.seconds.values()) / cpu.wall if cpu is not None and cpu.wall > 0 else float("nan")


def run(
    quick: bool,
    *,
    sizes: tuple[int, ...] | None = None,
    latencies: tuple[int, ...] = (0, 50),
    serial: int = SERIAL,
    pipe_records: int | None = None,
) -> Result:
    sizes = sizes or ((200,) if quick else (2_000, 20_000))
    pipe_records = pipe_records or (5_000 if quick else 20_000)
    runs: list[E2eResult] = []
    with bench_broker() as config:
        pipe_rate, pipe_cpu = pipe_baseline(config, pipe_records)
        for n in sizes:
            for latency in latencies:
                first = n == sizes[0]
                runs.append(
                    measure_e2e(
                        config, n, latency, serial=serial if first else 0, idle=IDLE if first else 0.0
                    )
                )
    rows: list[tuple[str, str]] = [
        ("concurrency per step", str(CONCURRENCY)),
        (
            f"step consumers ({WORKERS})",
            "; ".join(f"{name}: {' '.join(steps)}" for name, steps in WORKER_LAYOUTS[WORKERS].items()),
        ),
    ]
    rows.append(
        (
            f"pipe baseline ({pipe_records:,} records)",
            f"{pipe_rate:,.0f} msg/s; CPU ms per record: "
            + ", ".join(f"{k} {v:.3f}" for k, v in pipe_cpu.items())
            + f" ({LOAD}: preload producer + consume -> transactional produce)",
        )
    )
    columns: list[tuple[str, dict[str, float], float]] = []
    for r in runs:
        label = f"N={r.processes:,} llm={r.latency_ms}ms"
        rows += [
            (
                label,
                f"{r.rate:,.1f} processes/s ({r.seconds:.1f}s), statuses {r.statuses}, {r.approvals} approvals",
            ),
            (
                f"{label} latency",
                f"decision p50 {r.decision_p50:.0f} ms p99 {r.decision_p99:.0f} ms ({r.decisions:,} decisions); "
                f"process p50 {r.process_p50:.0f} ms p99 {r.process_p99:.0f} ms",
            ),
            (
                f"{label} stages p50",
                ", ".join(f"{t} step {a:.0f}/pm {b:.0f} ms" for t, (a, b) in r.stages.items()),
            ),
        ]
        cpu = r.cpu_ms()
        if cpu and r.decisions:
            per_record = cpu["total"] * r.processes / r.decisions
            rows.append(
                (
                    f"{label} CPU",
                    f"total {cpu['total']:.1f} ms per e-mail = {per_record:.2f} ms per journal record "
                    f"({r.decisions / r.processes:.1f} per e-mail; pipe: {pipe_cpu.get('total', float('nan')):.3f} "
                    "ms per record)",
                )
            )
        if cpu and r.idle is not None and r.idle.wall > 0:
            idle_per_s = idle_ms_per_s(r.idle)
            rows.append(
                (
                    f"{label} CPU, idle share",
                    f"the idle cluster burns {idle_per_s['total']:.0f} ms/s (broker + pm + steps): "
                    f"{idle_per_s['total'] * r.seconds / r.processes:.1f} of the {cpu['total']:.1f} ms per e-mail "
                    "over this run's duration",
                )
            )
            columns.append((f"idle llm={r.latency_ms}ms, ms/s", idle_per_s, _busy(r.idle)))
        columns.append((label, cpu, _busy(r.cpu)))
        if r.serial is not None:
            s = r.serial
            one = f"1 in flight llm={r.latency_ms}ms"
            rows.append(
                (
                    f"{one} ({s.processes} e-mails)",
                    f"ingest -> terminal p50 {s.p50:.0f} ms p99 {s.p99:.0f} ms ("
                    + ", ".join(f"{k} p50 {v:.0f} ms" for k, v in s.kinds_p50.items())
                    + f"), statuses {s.statuses}",
                )
            )
            columns.append((one, s.cpu_ms(), _busy(s.cpu)))
    rows += _cpu_rows(columns)
    head = runs[0]
    result = Result(
        "e2e",
        head.rate,
        "processes/s",
        extra={
            "workers": {name: list(steps) for name, steps in WORKER_LAYOUTS[WORKERS].items()},
            "pipe": {
                "records": pipe_records,
                "msg_per_s": round(pipe_rate),
                "cpu_ms_per_record": {k: round(v, 4) for k, v in pipe_cpu.items()},
            },
            "runs": [
                {
                    "processes": r.processes,
                    "llm_latency_ms": r.latency_ms,
                    "processes_per_s": round(r.rate, 2),
                    "seconds": round(r.seconds, 2),
                    "decision_p50_ms": r.decision_p50,
                    "decision_p99_ms": r.decision_p99,
                    "process_p50_ms": r.process_p50,
                    "process_p99_ms": r.process_p99,
                    "statuses": r.statuses,
                    "cpu_ms_per_email": {k: round(v, 3) for k, v in r.cpu_ms().items()},
                    **(
                        {}
                        if r.idle is None
                        else {"idle_cpu_ms_per_s": {k: round(v, 1) for k, v in idle_ms_per_s(r.idle).items()}}
                    ),
                    **(
                        {}
                        if r.serial is None
                        else {
                            "one_in_flight": {
                                "processes": r.serial.processes,
                                "p50_ms": r.serial.p50,
                                "p99_ms": r.serial.p99,
                                "p50_ms_by_kind": r.serial.kinds_p50,
                                "statuses": r.serial.statuses,
                                "cpu_ms_per_email": {k: round(v, 3) for k, v in r.serial.cpu_ms().items()},
                            }
                        }
                    ),
                }
                for r in runs
            ],
        },
    )
    report(rows, result)
    return result
