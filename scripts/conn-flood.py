#!/usr/bin/env python3
"""One address holds as many idle connections as it can while an honest client asks.

The attacker (127.0.0.2) keeps CONNECTIONS idle connections open to the server, opening a
new one whenever one is closed (the server closes idle ones after 10 s; one refused at once,
past a per-address cap, is tried again a second later). The honest client (127.0.0.3), in a
process of its own, sends `GET /` on a new connection every 20 ms from the third second on
and records how long each answer took, or that none came within 10 s.

    scripts/conn-flood.py PORT [SECONDS] [CONNECTIONS]

Prints how many connections the attacker held at the end and opened in all, and the honest
latencies (p50, p90, p99, max) with the share answered.
"""

import asyncio
import subprocess
import sys
import time

PORT = int(sys.argv[1])
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
CONNECTIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 10_500
sys.argv[2:4] = [str(SECONDS), str(CONNECTIONS)]
ATTACKER, HONEST = "127.0.0.2", "127.0.0.3"

held = 0
opened = 0


async def hold_one(stop: float) -> None:
    """Keeps one connection open, reopening it whenever the server closes it."""
    global held, opened
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", PORT, local_addr=(ATTACKER, 0)
            )
        except OSError:
            await asyncio.sleep(0.05)
            continue
        opened += 1
        held += 1
        since = time.monotonic()
        try:
            # Idle: send nothing, wait for the server to close it.
            await asyncio.wait_for(reader.read(1), timeout=max(0.0, stop - time.monotonic()))
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            held -= 1
            writer.close()
        if time.monotonic() - since < 0.1:
            await asyncio.sleep(1)


async def honest(stop: float, latencies: list, failures: list) -> None:
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", PORT, local_addr=(HONEST, 0)), 10
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(64), 10)
            writer.close()
            if answer.startswith(b"HTTP/1.1 200"):
                latencies.append(time.monotonic() - started)
            else:
                failures.append(answer[:20])
        except (asyncio.TimeoutError, OSError) as error:
            failures.append(repr(error))
        await asyncio.sleep(0.02)


async def attack() -> None:
    stop = time.monotonic() + SECONDS
    # Opened 500 at a time, so that the kernel's accept queue keeps up.
    holders = []
    for first in range(0, CONNECTIONS, 500):
        holders += [asyncio.create_task(hold_one(stop)) for _ in range(min(500, CONNECTIONS - first))]
        await asyncio.sleep(0.1)
    print(f"attacker: {opened} connections opened", flush=True)
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


async def established() -> list:
    """What the server holds from the attacker, sampled each second: not what the attacker
    believes (a connection still in the kernel's accept queue looks open from there)."""
    samples = []
    stop = time.monotonic() + SECONDS - 4
    while time.monotonic() < stop:
        await asyncio.sleep(1)
        ss = await asyncio.create_subprocess_exec(
            "ss", "-Htn", "state", "established", f"( sport = :{PORT} and dst {ATTACKER} )",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await ss.communicate()
        samples.append(out.count(b"\n"))
    return sorted(samples)


async def measure() -> None:
    await asyncio.sleep(3)
    latencies, failures = [], []
    sampling = asyncio.create_task(established())
    await honest(time.monotonic() + SECONDS - 4, latencies, failures)
    samples = await sampling
    print(
        f"attacker's connections established with the server, sampled each second: "
        f"median {samples[len(samples) // 2]}, max {samples[-1]}"
    )
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
    total = len(latencies) + len(failures)
    if latencies:
        print(
            f"honest: {len(latencies)} of {total} answered; "
            f"p50 {q(0.50):.1f} ms, p90 {q(0.90):.1f} ms, p99 {q(0.99):.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms"
        )
    else:
        print(f"honest: 0 of {total} answered: {failures[:3]}")


if len(sys.argv) > 4 and sys.argv[4] == "--honest":
    asyncio.run(measure())
else:
    honest_process = subprocess.Popen([sys.executable, __file__, *sys.argv[1:4], "--honest"])
    asyncio.run(attack())
    honest_process.wait()
